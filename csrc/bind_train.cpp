// fastllm._bpe.BpeTrainer: the Python binding of BpeTrainer (train.h). Glue only: str -> UTF-8,
// the GIL released while counting and training, progress and Ctrl-C forwarded from the training
// thread. Argument validation lives in fastllm/_train_bpe.py.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "train.h"

namespace py = pybind11;

namespace {

// The UTF-8 of a str, kept alive by `owner`. Lone surrogates cannot be encoded; as in the
// tokenizer binding they become U+FFFD, so training sees what encoding will see.
struct Utf8Text {
  py::object owner;
  std::string_view view;
};

Utf8Text utf8_text(py::handle obj) {
  if (!PyUnicode_Check(obj.ptr()))
    throw py::type_error(std::string("BpeTrainer expects str, got ") + Py_TYPE(obj.ptr())->tp_name);
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(obj.ptr(), &n);
  if (p != nullptr) return {py::reinterpret_borrow<py::object>(obj), std::string_view(p, static_cast<size_t>(n))};
  PyErr_Clear();
  py::object fixed = obj.attr("encode")("utf-16", "surrogatepass").attr("decode")("utf-16", "replace");
  p = PyUnicode_AsUTF8AndSize(fixed.ptr(), &n);
  if (p == nullptr) throw py::error_already_set();
  return {fixed, std::string_view(p, static_cast<size_t>(n))};
}

class PyBpeTrainer {
 public:
  explicit PyBpeTrainer(const std::string& pattern) : pattern_(pattern), trainer_(pattern) {}

  void add_text(py::handle text) {
    Utf8Text t = utf8_text(text);
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);  // taken without the GIL: see train()
    trainer_.add_text(t.view);
  }

  // Counts the texts on up to num_threads threads, each into its own table (merged at the end),
  // so the counts, and so the merges, are the same for any number of threads.
  void add_texts(const py::iterable& texts, py::object num_threads) {
    std::vector<Utf8Text> items;
    for (py::handle t : texts) items.push_back(utf8_text(t));
    size_t threads = std::max(1u, std::thread::hardware_concurrency());
    if (!num_threads.is_none()) {
      const long n = num_threads.cast<long>();
      if (n < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(n));
      threads = static_cast<size_t>(n);
    }
    threads = std::max<size_t>(1, std::min(threads, items.size()));

    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    if (threads == 1) {
      for (const Utf8Text& t : items) trainer_.add_text(t.view);
      return;
    }
    std::vector<fastllm::BpeTrainer> locals;
    for (size_t k = 1; k < threads; ++k) locals.emplace_back(pattern_);  // one pretokenizer per thread
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    auto work = [&](fastllm::BpeTrainer& into) {
      try {
        for (size_t i; !failed.load() && (i = next.fetch_add(1)) < items.size();) into.add_text(items[i].view);
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    for (size_t k = 0; k + 1 < threads; ++k) pool.emplace_back(work, std::ref(locals[k]));
    work(trainer_);
    for (std::thread& th : pool) th.join();
    if (error) std::rethrow_exception(error);
    for (const fastllm::BpeTrainer& local : locals) trainer_.merge_counts_from(local);
  }

  py::tuple train(size_t num_merges, uint64_t min_frequency, py::object progress) {
    if (!progress.is_none() && !PyCallable_Check(progress.ptr()))
      throw py::type_error("progress must be callable or None");
    fastllm::BpeTrainResult result;
    std::exception_ptr callback_error;  // a Python exception raised in progress (or Ctrl-C)
    bool cancelled = false;
    {
      // Release the GIL before taking the mutex: a thread waiting on the mutex then never holds
      // the GIL that this thread's progress callback needs.
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      using Clock = std::chrono::steady_clock;
      Clock::time_point last = Clock::now();
      size_t next_report = 0;
      auto report = [&](size_t done, size_t total) -> bool {
        // Taking the GIL costs microseconds; doing it every ~1% of the merges, and at least every
        // 0.2 s, keeps the progress line and Ctrl-C responsive without slowing training.
        const Clock::time_point now = Clock::now();
        if (done < next_report && done < total && now - last < std::chrono::milliseconds(200)) return true;
        next_report = done + std::max<size_t>(1, total / 100);
        last = now;
        py::gil_scoped_acquire acquire;
        try {
          if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // KeyboardInterrupt
          if (!progress.is_none()) {
            py::object keep_going = progress(done, total);
            if (keep_going.ptr() == Py_False) return false;  // only an explicit False cancels
          }
          return true;
        } catch (...) {
          callback_error = std::current_exception();
          return false;
        }
      };
      try {
        result = trainer_.train(num_merges, min_frequency, report);
      } catch (const fastllm::BpeTrainCancelled&) {
        cancelled = true;
      }
    }
    if (callback_error) std::rethrow_exception(callback_error);
    if (cancelled) throw fastllm::BpeTrainCancelled();

    py::list tokens(result.tokens.size());
    for (size_t i = 0; i < result.tokens.size(); ++i) tokens[i] = py::bytes(result.tokens[i]);
    py::list merges(result.merges.size());
    for (size_t i = 0; i < result.merges.size(); ++i)
      merges[i] = py::make_tuple(result.merges[i].first, result.merges[i].second);
    return py::make_tuple(tokens, merges);
  }

  size_t num_unique_words() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    return trainer_.num_unique_words();
  }
  uint64_t num_words() {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mutex_);
    return trainer_.num_words();
  }
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  std::mutex mutex_;  // the GIL is released during the work, so Python threads could share a trainer
  fastllm::BpeTrainer trainer_;
};

}  // namespace

void bind_train(py::module_& m) {
  py::class_<PyBpeTrainer>(m, "BpeTrainer",
                           "Counts pre-tokenized pieces of texts, then learns byte-level BPE merges (use "
                           "fastllm.train_bpe).")
      .def(py::init<const std::string&>(), py::arg("pattern"))
      .def("add_text", &PyBpeTrainer::add_text, py::arg("text"))
      .def("add_texts", &PyBpeTrainer::add_texts, py::arg("texts"), py::arg("num_threads") = py::none())
      .def("train", &PyBpeTrainer::train, py::arg("num_merges"), py::arg("min_frequency") = 0,
           py::arg("progress") = py::none(),
           "Returns (tokens: list[bytes], merges: list[tuple[int, int]]); merge i creates token 256 + i.")
      .def_property_readonly("num_unique_words", &PyBpeTrainer::num_unique_words)
      .def_property_readonly("num_words", &PyBpeTrainer::num_words)
      .def_property_readonly("pattern", &PyBpeTrainer::pattern);
}
