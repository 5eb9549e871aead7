// fastllm._bpe: the Python binding of the C++ BPE core. Only glue lives here: converting str and
// lists, releasing the GIL around the work, turning BpeError into ValueError. Validation and the
// special-token policy are decided in fastllm/tokenizer.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <optional>
#include <thread>

#include "bpe.h"
#include "threads.h"

namespace py = pybind11;
using fastllm::CoreBPE;
using fastllm::SpecialPolicy;
using fastllm::SpecialToken;

void bind_train(py::module_& m);  // bind_train.cpp

namespace {

// ==== Conversions ====

// The UTF-8 of a str. Lone surrogates cannot be encoded; like tiktoken, they become U+FFFD.
struct Utf8 {
  py::object owner;  // keeps the bytes alive
  std::string_view view;
};

Utf8 utf8_of(py::handle obj) {
  if (!PyUnicode_Check(obj.ptr()))
    throw py::type_error(std::string("expected str, got ") + Py_TYPE(obj.ptr())->tp_name);
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(obj.ptr(), &n);
  if (p != nullptr) return Utf8{py::reinterpret_borrow<py::object>(obj), std::string_view(p, static_cast<size_t>(n))};
  PyErr_Clear();
  py::object fixed = obj.attr("encode")("utf-16", "surrogatepass").attr("decode")("utf-16", "replace");
  p = PyUnicode_AsUTF8AndSize(fixed.ptr(), &n);
  if (p == nullptr) throw py::error_already_set();
  return Utf8{fixed, std::string_view(p, static_cast<size_t>(n))};
}

// The Python int of a token id. Ints are immutable, so one object per id is shared by every list
// returned (as CPython shares -5..256): building a list then costs a load and an incref per id, not an
// allocation, which was a third of an encode call. Only touched with the GIL held.
PyObject* id_object(uint32_t id) {
  constexpr uint32_t kMaxCached = 1u << 21;  // larger ids (no real vocabulary) are not cached
  static std::vector<PyObject*> cache;
  if (id >= cache.size()) {
    if (id >= kMaxCached) return PyLong_FromUnsignedLong(id);
    cache.resize(std::max<size_t>(id + 1, std::min<size_t>(2 * cache.size(), kMaxCached)), nullptr);
  }
  PyObject*& obj = cache[id];
  if (obj == nullptr) {
    obj = PyLong_FromUnsignedLong(id);
    if (obj == nullptr) return nullptr;
  }
  Py_INCREF(obj);
  return obj;
}

py::list to_list(const std::vector<uint32_t>& ids) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(ids.size()));
  if (list == nullptr) throw py::error_already_set();
  // The list of a giant piece's ids is tens of megabytes of fresh pages, whose first writes cost ~2 us a page:
  // those faults are taken on the threads a giant piece may use (the items are NULL already; zeros are written).
  constexpr size_t kFaultChunk = size_t{1} << 20;  // items
  size_t threads = ids.size() >= 2 * kFaultChunk ? fastllm::PieceThreads::hardware().threads : 1;
  if (threads > 1) {
    PyObject** items = reinterpret_cast<PyListObject*>(list)->ob_item;
    fastllm::parallel_for((ids.size() + kFaultChunk - 1) / kFaultChunk, threads, [&](size_t c) {
      const size_t lo = c * kFaultChunk;
      std::memset(static_cast<void*>(items + lo), 0, std::min(kFaultChunk, ids.size() - lo) * sizeof(PyObject*));
    });
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    PyObject* v = id_object(ids[i]);
    if (v == nullptr) {
      Py_DECREF(list);
      throw py::error_already_set();
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), v);
  }
  return py::reinterpret_steal<py::list>(list);
}

std::vector<uint32_t> ids_of(py::handle obj) {
  py::object seq = py::reinterpret_steal<py::object>(PySequence_Fast(obj.ptr(), "token ids must be a sequence of int"));
  if (!seq) throw py::error_already_set();
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
  PyObject** items = PySequence_Fast_ITEMS(seq.ptr());
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    if (PyLong_CheckExact(item)) {  // the common case, without the subtype checks below
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
      if (overflow == 0 && v >= 0 && v < static_cast<long long>(CoreBPE::kNoToken)) {
        ids[static_cast<size_t>(i)] = static_cast<uint32_t>(v);
        continue;
      }
    }
    if (PyBool_Check(item) || PyFloat_Check(item))
      throw py::type_error(std::string("token ids must be int, got ") + Py_TYPE(item)->tp_name);
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (v == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      throw py::type_error(std::string("token ids must be int, got ") + Py_TYPE(item)->tp_name);
    }
    if (overflow != 0 || v < 0 || v >= static_cast<long long>(CoreBPE::kNoToken))
      throw py::value_error("token id " + py::str(item).cast<std::string>() + " is out of range");
    ids[static_cast<size_t>(i)] = static_cast<uint32_t>(v);
  }
  return ids;
}

std::vector<SpecialToken> specials_of(const std::vector<std::tuple<std::string, uint32_t, bool>>& specials) {
  std::vector<SpecialToken> out;
  for (auto& [text, id, special] : specials) out.push_back(SpecialToken{text, id, special});
  return out;
}

std::vector<SpecialPolicy> policy_of(const py::bytes& policy) {
  std::string p = policy;
  std::vector<SpecialPolicy> out;
  for (char c : p) {
    if (c > 2 || c < 0) throw py::value_error("bad special-token policy");
    out.push_back(static_cast<SpecialPolicy>(c));
  }
  return out;
}

// (kind, index, item JSON, value JSON, side) for fastllm/_tokenizer_json.py to word; None if no problem.
py::object problem_of(const fastllm::TokenizerJson::Problem& p) {
  using Kind = fastllm::TokenizerJson::Problem::Kind;
  const char* kind = nullptr;
  switch (p.kind) {
    case Kind::kNone: return py::none();
    case Kind::kVocabId: kind = "vocab-id"; break;
    case Kind::kVocabIdTooLarge: kind = "vocab-id-too-large"; break;
    case Kind::kVocabChar: kind = "vocab-char"; break;
    case Kind::kMergeShape: kind = "merge-shape"; break;
    case Kind::kMergeUnknown: kind = "merge-unknown"; break;
  }
  return py::make_tuple(kind, p.index, py::str(p.item), py::str(p.value), p.side);
}

// ==== Batches ====

// How a call may split a giant piece: `threads` None means the hardware's (PieceThreads::hardware), `min_part`
// None the default part size (tests make it small, to cut short pieces into many parts).
fastllm::PieceThreads piece_threads(py::object threads, py::object min_part) {
  fastllm::PieceThreads t = threads.is_none() ? fastllm::PieceThreads::hardware() : fastllm::PieceThreads{};
  if (!threads.is_none()) {
    long n = threads.cast<long>();
    if (n < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(n));
    t.threads = static_cast<unsigned>(std::min<long>(n, 64));
  }
  if (!min_part.is_none()) {
    long n = min_part.cast<long>();
    if (n < 1) throw py::value_error("min_part must be >= 1, got " + std::to_string(n));
    t.min_part = static_cast<size_t>(n);
  }
  return t;
}

size_t default_threads(py::object num_threads) {
  if (num_threads.is_none()) return std::max(1u, std::thread::hardware_concurrency());
  long n = num_threads.cast<long>();
  if (n < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(n));
  return static_cast<size_t>(n);
}

// Returns (ids per text, index of the first text with a disallowed special or -1, that special's index).
py::tuple encode_batch(const CoreBPE& bpe, const py::list& texts, py::object policy, py::object num_threads) {
  size_t n = texts.size(), threads = default_threads(num_threads);
  std::vector<Utf8> utf8;
  utf8.reserve(n);
  for (auto t : texts) utf8.push_back(utf8_of(t));
  bool ordinary = policy.is_none();
  std::vector<SpecialPolicy> pol = ordinary ? std::vector<SpecialPolicy>{} : policy_of(policy.cast<py::bytes>());
  std::vector<std::vector<uint32_t>> out(n);
  std::vector<long> bad(n, -1);
  // A giant piece may use the threads that the batch leaves idle (all of them for one text), no more.
  fastllm::PieceThreads per_text;
  per_text.threads = static_cast<unsigned>(std::clamp<size_t>(threads / std::max<size_t>(n, 1), 1,
                                                              fastllm::PieceThreads::hardware().threads));
  {
    py::gil_scoped_release release;
    fastllm::parallel_for(n, threads, [&](size_t i) {
      // Encode into a local vector: out[i] and out[i + 1] share a cache line, and threads take
      // neighbouring texts, so appending to out[i] directly would bounce that line between cores.
      std::vector<uint32_t> ids;
      if (ordinary) bpe.encode_ordinary(utf8[i].view, ids, per_text);
      else bad[i] = bpe.encode(utf8[i].view, pol, ids, per_text);
      out[i] = std::move(ids);
    });
  }
  for (size_t i = 0; i < n; ++i)
    if (bad[i] >= 0) return py::make_tuple(py::none(), static_cast<long>(i), bad[i]);
  py::list result(n);
  for (size_t i = 0; i < n; ++i) result[i] = to_list(out[i]);
  return py::make_tuple(result, -1, -1);
}

}  // namespace

PYBIND11_MODULE(_bpe, m) {
  m.doc() = "fastllm's C++ byte-level BPE core (use fastllm.tokenizer.Tokenizer)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {  // BpeError and pattern errors
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  using Specials = std::vector<std::tuple<std::string, uint32_t, bool>>;
  using fastllm::TokenizerJson;
  py::class_<TokenizerJson>(m, "TokenizerJson",
                            "A tokenizer.json read by read_tokenizer_json: model.vocab and model.merges decoded, the "
                            "rest as JSON text. CoreBPE.from_tokenizer_json takes the decoded parts.")
      .def_property_readonly("rest", [](const TokenizerJson& doc) { return py::str(doc.rest); })
      .def_readonly_static("MAX_ID", &TokenizerJson::kMaxId)
      .def_readonly("has_vocab", &TokenizerJson::has_vocab)
      .def_readonly("has_merges", &TokenizerJson::has_merges)
      .def_property_readonly("vocab_problem", [](const TokenizerJson& doc) { return problem_of(doc.vocab_problem); })
      .def_property_readonly("merges_problem",
                             [](const TokenizerJson& doc) { return problem_of(doc.merges_problem); });
  m.def(
      "read_tokenizer_json", [](const std::string& path) { return fastllm::load_tokenizer_json(path); },
      py::arg("path"), py::call_guard<py::gil_scoped_release>());

  py::class_<CoreBPE>(m, "CoreBPE")
      .def_static(
          "from_tiktoken_file",
          [](const std::string& path, const Specials& specials, const std::string& pattern) {
            return CoreBPE::from_ranks(fastllm::load_tiktoken_ranks(path), specials_of(specials), pattern);
          },
          py::arg("path"), py::arg("specials"), py::arg("pattern"), py::call_guard<py::gil_scoped_release>())
      .def_static(
          "from_gpt2_files",
          [](const std::string& encoder_json, const std::string& vocab_bpe, const Specials& specials,
             const std::string& pattern, bool endoftext_special) {
            auto [vocab, merges] = fastllm::load_gpt2_files(encoder_json, vocab_bpe);
            std::vector<SpecialToken> sp = specials_of(specials);
            if (endoftext_special && sp.empty())  // GPT-2's vocabulary lists its one special token as a plain entry
              for (size_t i = 0; i < vocab.size(); ++i)
                if (vocab.token(i) == "<|endoftext|>")
                  sp.push_back(SpecialToken{std::string(vocab.token(i)), vocab.tokens[i].id, true});
            return CoreBPE::from_merge_text(std::move(vocab), merges, std::move(sp), pattern, encoder_json);
          },
          py::arg("encoder_json"), py::arg("vocab_bpe"), py::arg("specials"), py::arg("pattern"),
          py::arg("endoftext_special") = false, py::call_guard<py::gil_scoped_release>())
      .def_static(
          "from_ranks",
          [](const std::vector<std::pair<py::bytes, uint32_t>>& ranks, const Specials& specials,
             const std::string& pattern) {
            CoreBPE::Vocab vocab;
            for (auto& [b, id] : ranks) vocab.add(std::string_view(b), id);
            return CoreBPE::from_ranks(std::move(vocab), specials_of(specials), pattern);
          },
          py::arg("ranks"), py::arg("specials"), py::arg("pattern"))
      .def_static(
          "from_tokenizer_json",
          [](TokenizerJson& doc, const Specials& specials, const std::string& pattern, bool ignore_merges) {
            using Kind = TokenizerJson::Problem::Kind;
            if (!doc.has_vocab || !doc.has_merges || doc.vocab_problem.kind != Kind::kNone ||
                doc.merges_problem.kind != Kind::kNone)
              throw py::value_error("the tokenizer.json has no usable model.vocab and model.merges");
            // Taken out with the GIL held (another thread may hold the same document), then built without it.
            TokenizerJson own;
            std::swap(own.vocab, doc.vocab);
            std::swap(own.merges, doc.merges);
            std::swap(own.merge_bytes, doc.merge_bytes);
            std::swap(own.merge_bytes_size, doc.merge_bytes_size);
            doc.has_vocab = doc.has_merges = false;  // used up
            std::vector<SpecialToken> sp = specials_of(specials);
            py::gil_scoped_release release;
            return CoreBPE::from_tokenizer_json(own, std::move(sp), pattern, ignore_merges);
          },
          py::arg("doc"), py::arg("specials"), py::arg("pattern"), py::arg("ignore_merges"))
      .def_static(
          "from_merges",
          [](const std::vector<std::pair<py::bytes, uint32_t>>& vocab, const CoreBPE::Merges& merges,
             const Specials& specials, const std::string& pattern, bool ignore_merges) {
            CoreBPE::Vocab v;
            for (auto& [b, id] : vocab) v.add(std::string_view(b), id);
            return CoreBPE::from_merges(std::move(v), merges, specials_of(specials), pattern, ignore_merges);
          },
          py::arg("vocab"), py::arg("merges"), py::arg("specials"), py::arg("pattern"), py::arg("ignore_merges") = false)
      .def(
          "encode_ordinary",
          [](const CoreBPE& bpe, py::handle text, py::object threads, py::object min_part) {
            Utf8 s = utf8_of(text);
            fastllm::PieceThreads pt = piece_threads(threads, min_part);
            std::vector<uint32_t> ids;
            {
              py::gil_scoped_release release;
              bpe.encode_ordinary(s.view, ids, pt);
            }
            return to_list(ids);
          },
          py::arg("text"), py::arg("threads") = py::none(), py::arg("min_part") = py::none())
      .def(
          "encode",
          [](const CoreBPE& bpe, py::handle text, const py::bytes& policy, py::object threads, py::object min_part)
              -> py::object {
            Utf8 s = utf8_of(text);
            std::vector<SpecialPolicy> pol = policy_of(policy);
            fastllm::PieceThreads pt = piece_threads(threads, min_part);
            std::vector<uint32_t> ids;
            long bad;
            {
              py::gil_scoped_release release;
              bad = bpe.encode(s.view, pol, ids, pt);
            }
            if (bad >= 0) return py::int_(bad);  // index of a disallowed special found in the text
            return to_list(ids);
          },
          py::arg("text"), py::arg("policy"), py::arg("threads") = py::none(), py::arg("min_part") = py::none())
      .def("encode_batch", &encode_batch, py::arg("texts"), py::arg("policy"), py::arg("num_threads"))
      .def(
          "decode_bytes",
          [](const CoreBPE& bpe, py::handle ids) {
            std::vector<uint32_t> v = ids_of(ids);
            std::string out;
            {
              py::gil_scoped_release release;
              bpe.decode(v.data(), v.size(), out);
            }
            return py::bytes(out);
          },
          py::arg("ids"))
      .def(
          "decode",
          [](const CoreBPE& bpe, py::handle ids, const char* errors) {
            std::vector<uint32_t> v = ids_of(ids);
            std::string out;
            {
              py::gil_scoped_release release;
              bpe.decode(v.data(), v.size(), out);
            }
            PyObject* s = PyUnicode_DecodeUTF8(out.data(), static_cast<Py_ssize_t>(out.size()), errors);
            if (s == nullptr) throw py::error_already_set();
            return py::reinterpret_steal<py::str>(s);
          },
          py::arg("ids"), py::arg("errors") = "replace")
      .def(
          "token_to_id",
          [](const CoreBPE& bpe, const py::bytes& token) -> py::object {
            uint32_t id = bpe.token_to_id(std::string_view(token));
            if (id == CoreBPE::kNoToken) return py::none();
            return py::int_(id);
          },
          py::arg("token"))
      .def("token_bytes", [](const CoreBPE& bpe, uint32_t id) { return py::bytes(std::string(bpe.token_bytes(id))); })
      .def("has_id", &CoreBPE::has_id)
      .def("is_special", &CoreBPE::is_special)
      .def_property_readonly("vocab_size", &CoreBPE::vocab_size)
      .def_property_readonly("num_ordinary", &CoreBPE::num_ordinary)
      .def_property_readonly("uses_merges", &CoreBPE::uses_merges)
      .def_property_readonly("pattern", [](const CoreBPE& bpe) { return bpe.pretokenizer().pattern(); })
      .def_property_readonly("specials",
                             [](const CoreBPE& bpe) {
                               py::list out;
                               for (auto& s : bpe.specials()) out.append(py::make_tuple(s.text, s.id, s.special));
                               return out;
                             })
      .def("merges", &CoreBPE::merges, py::call_guard<py::gil_scoped_release>())
      .def(
          "merge_piece",
          [](const CoreBPE& bpe, const py::bytes& piece, const std::string& algo, py::object threads,
             py::object min_part) -> py::object {
            fastllm::PieceThreads pt = piece_threads(threads, min_part);
            CoreBPE::MergeAlgo a;
            if (algo == "small") a = CoreBPE::MergeAlgo::kSmall;
            else if (algo == "queue") a = CoreBPE::MergeAlgo::kQueue;
            else if (algo == "linear") a = CoreBPE::MergeAlgo::kLinear;
            else throw py::value_error("algo must be 'small', 'queue' or 'linear'");
            std::string_view view(piece);
            std::vector<uint32_t> ids;
            bool ok;
            {
              py::gil_scoped_release release;
              ok = bpe.merge_piece(view, a, ids, pt);
            }
            if (!ok) return py::none();
            return to_list(ids);
          },
          py::arg("piece"), py::arg("algo"), py::arg("threads") = 1, py::arg("min_part") = py::none(),
          "BPE of one piece's bytes by one algorithm (tests): a list of ids, or None if 'linear' is not available.\n"
          "'linear' cuts the piece into up to `threads` parts of `min_part` bytes or more, merged in parallel.");

  m.def(
      "pretokenize",
      [](py::handle text, const std::string& pattern) {
        Utf8 s = utf8_of(text);
        auto pre = fastllm::make_pretokenizer(pattern);
        std::vector<fastllm::Span> spans;
        pre->split(s.view, spans);
        py::list out;
        for (auto [a, b] : spans) {
          PyObject* piece = PyUnicode_DecodeUTF8(s.view.data() + a, static_cast<Py_ssize_t>(b - a), "strict");
          if (piece == nullptr) throw py::error_already_set();
          out.append(py::reinterpret_steal<py::str>(piece));
        }
        return out;
      },
      py::arg("text"), py::arg("pattern"), "Pieces of `text` under a pre-tokenization pattern (for tests).");
  m.def(
      "pretokenize_cut",
      [](py::handle text, const std::string& pattern, size_t from, std::optional<size_t> to) {
        Utf8 s = utf8_of(text);
        return fastllm::make_pretokenizer(pattern)->cut_at_or_after(s.view, from, to.value_or(s.view.size()));
      },
      py::arg("text"), py::arg("pattern"), py::arg("from_byte"), py::arg("to_byte") = py::none(),
      "The first UTF-8 offset in [from_byte, to_byte) where the pattern's pieces of `text` separate into those of "
      "the two halves (a long text is pre-tokenized in such parts on threads), or the text's length if it knows of "
      "none there (for tests).");
  m.def(
      "piece_parts", [](size_t n) { return fastllm::PieceThreads::hardware().parts(n); }, py::arg("nbytes"),
      "Into how many parts (threads) a single call cuts a piece of `nbytes` bytes by default (benchmarks).");
  m.def(
      "text_parts",
      [](size_t n, size_t longest, size_t pieces) {
        return fastllm::PieceThreads::hardware().text_parts(n, longest, pieces);
      },
      py::arg("nbytes"), py::arg("longest"), py::arg("pieces"),
      "Into how many groups of pieces (threads) a single call splits a text of `nbytes` bytes in `pieces` pieces, the "
      "longest of `longest` bytes, by default (benchmarks).");
  bind_train(m);
  m.def("byte_to_unicode", [](int b) {
    if (b < 0 || b > 255) throw py::value_error("byte out of range");
    return fastllm::byte_to_unicode(static_cast<uint8_t>(b));
  });
}
