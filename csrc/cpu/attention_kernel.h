// The body of the decode attention kernel (attention.h), written once over the vector type V of the
// linear kernel and included by the per-ISA files right after linear_kernel.h (whose bf16 helpers it
// uses), inside their namespaces. Besides linear_kernel.h's operations V provides set1(f) and
// store(p, reg). Like linear_kernel.h it includes nothing and calls no standard-library code (expf is
// the compiler builtin): it is compiled once per instruction set.

inline float to_f32(float x) { return x; }
inline float to_f32(uint16_t h) { return bf16_to_f32(h); }

// Floats per row of the padded query and accumulator copies (a multiple of every ISA's lane count).
inline int64_t attn_padded(int64_t d) { return (d + 15) / 16 * 16; }

// dots[u] = sum_d q[d] * k[u][d] for 4 keys at once: 4 accumulators reduced together (V::hsum4), a
// quarter of the horizontal-sum work of one key at a time. q is zero-padded to whole vectors, each k is
// read exactly D elements.
template <class T>
inline void attn_dot4(const float* q, const T* const* k, int64_t D, float* dots) {
  typename V::reg acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
  int64_t d = 0;
  for (; d + V::L <= D; d += V::L) {
    const typename V::reg qv = V::load(q + d);
    FASTLLM_UNROLL for (int u = 0; u < 4; ++u) acc[u] = V::fma(qv, V::load(k[u] + d), acc[u]);
  }
  V::hsum4(acc[0], acc[1], acc[2], acc[3], dots);
  for (; d < D; ++d)
    for (int u = 0; u < 4; ++u) dots[u] += q[d] * to_f32(k[u][d]);
}

// out[d] = sum_j p[j] * v_j[d] for d < Dv (v_j = v + off[j]), accumulated in registers 4 vectors of
// columns at a time (a tail through memory).
template <class T>
inline void attn_pv(const float* p, const T* v, const int64_t* off, int64_t n, int64_t Dv, float* out) {
  constexpr int64_t W = 4 * V::L;
  int64_t d0 = 0;
  for (; d0 + W <= Dv; d0 += W) {
    typename V::reg acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
    for (int64_t j = 0; j < n; ++j) {
      if (p[j] == 0.0f) continue;  // a key this query does not see: never 0 * NaN
      const typename V::reg pv = V::set1(p[j]);
      const T* vj = v + off[j] + d0;
      FASTLLM_UNROLL for (int u = 0; u < 4; ++u) acc[u] = V::fma(pv, V::load(vj + u * V::L), acc[u]);
    }
    FASTLLM_UNROLL for (int u = 0; u < 4; ++u) V::store(out + d0 + u * V::L, acc[u]);
  }
  if (d0 == Dv) return;
  for (int64_t d = d0; d < Dv; ++d) out[d] = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (p[j] == 0.0f) continue;
    const T* vj = v + off[j];
    for (int64_t d = d0; d < Dv; ++d) out[d] += p[j] * to_f32(vj[d]);
  }
}

// The softmax numerators of a row of n scores: p[j] = exp(p[j] - m) with m their maximum (exp never overflows), 0
// where p[j] is -inf (a key the query does not see), a vector at a time (V::exp_minus; the last partial vector
// through a copy padded with -inf). Returns their sum, m in `max`. A NaN score makes the sum NaN (it is never the
// maximum).
inline float attn_exp(float* p, int64_t n, float& max) {
  constexpr float kNegInf = -__builtin_inff();
  typename V::reg mv = V::set1(kNegInf);
  int64_t j = 0;
  for (; j + V::L <= n; j += V::L) mv = V::max(V::load(p + j), mv);
  float m = V::hmax(mv);
  for (int64_t k = j; k < n; ++k) m = p[k] > m ? p[k] : m;
  max = m;
  mv = V::set1(m);
  typename V::reg sum = V::zero();
  for (j = 0; j + V::L <= n; j += V::L) {
    const typename V::reg e = V::exp_minus(V::load(p + j), mv);
    V::store(p + j, e);
    sum = V::add(sum, e);
  }
  if (j < n) {
    float tail[V::L];
    for (int64_t k = 0; k < V::L; ++k) tail[k] = j + k < n ? p[j + k] : kNegInf;
    const typename V::reg e = V::exp_minus(V::load(tail), mv);
    V::store(tail, e);
    sum = V::add(sum, e);
    for (int64_t k = 0; j + k < n; ++k) p[j + k] = tail[k];
  }
  return V::hsum(sum);
}

// Rows of one kv head (an item whose rows share it: MLA's latent head, GQA groups) read the same key and value
// rows: the two functions below load and widen each once for all NR rows (NR x KU keys or NR x CU column vectors of
// accumulators in registers), where the per-row passes read them once per row: MLA 262M's 8 rows x 513 keys x 320
// bf16, 131 -> 60 us an item hot.
constexpr int kSharedKeys = V::kRegs >= 32 ? 2 : 1;  // keys a step (NR x KU accumulators)

// dots[r * KU + u] for keys k[0, KU) (rows of D elements) against the NR fp32 query rows q (stride Dp, zero-padded).
template <int NR, class T>
inline void attn_dots_shared(const float* q, int64_t Dp, const T* const* k, int64_t D, float* dots) {
  constexpr int KU = kSharedKeys, NA = NR * KU;
  typename V::reg acc[NA];
  FASTLLM_UNROLL for (int a = 0; a < NA; ++a) acc[a] = V::zero();
  int64_t d = 0;
  for (; d + V::L <= D; d += V::L) {
    typename V::reg kv[KU];
    FASTLLM_UNROLL for (int u = 0; u < KU; ++u) kv[u] = V::load(k[u] + d);
    FASTLLM_UNROLL for (int r = 0; r < NR; ++r) {
      const typename V::reg qv = V::load(q + r * Dp + d);
      FASTLLM_UNROLL for (int u = 0; u < KU; ++u) acc[r * KU + u] = V::fma(qv, kv[u], acc[r * KU + u]);
    }
  }
  int a = 0;
  for (; a + 4 <= NA; a += 4) V::hsum4(acc[a], acc[a + 1], acc[a + 2], acc[a + 3], dots + a);
  for (; a < NA; ++a) dots[a] = V::hsum(acc[a]);
  for (; d < D; ++d)
    for (int r = 0; r < NR; ++r)
      for (int u = 0; u < KU; ++u) dots[r * KU + u] += q[r * Dp + d] * to_f32(k[u][d]);
}

// out[r * ldo + d] = sum_j p[r * n + j] * v_j[d] for the NR rows, d < Dv (v_j = v + off[j]): column blocks of CU
// vectors through the keys, each value vector widened once for all rows (a probability of 0 multiplies a written
// value row, as in the reference); the columns past the last block per row (attn_pv).
template <int NR, class T>
inline void attn_pv_shared(const float* p, int64_t n, const T* v, const int64_t* off, int64_t Dv, float* out,
                           int64_t ldo) {
  constexpr int CU = V::kRegs >= 32 ? 2 : 1, W = CU * V::L;
  int64_t d0 = 0;
  for (; d0 + W <= Dv; d0 += W) {
    typename V::reg acc[NR * CU];
    FASTLLM_UNROLL for (int a = 0; a < NR * CU; ++a) acc[a] = V::zero();
    for (int64_t j = 0; j < n; ++j) {
      typename V::reg vv[CU];
      FASTLLM_UNROLL for (int c = 0; c < CU; ++c) vv[c] = V::load(v + off[j] + d0 + c * V::L);
      FASTLLM_UNROLL for (int r = 0; r < NR; ++r) {
        const typename V::reg pv = V::set1(p[r * n + j]);
        FASTLLM_UNROLL for (int c = 0; c < CU; ++c) acc[r * CU + c] = V::fma(pv, vv[c], acc[r * CU + c]);
      }
    }
    FASTLLM_UNROLL for (int r = 0; r < NR; ++r) FASTLLM_UNROLL for (int c = 0; c < CU; ++c)
      V::store(out + r * ldo + d0 + c * V::L, acc[r * CU + c]);
  }
  if (d0 < Dv)
    for (int r = 0; r < NR; ++r) attn_pv(p + r * n, v + d0, off, n, Dv - d0, out + r * ldo + d0);
}

// The two for nr in [2, kAttnRows] rows.
template <class T>
inline void attn_dots_shared(int64_t nr, const float* q, int64_t Dp, const T* const* k, int64_t D, float* dots) {
  switch (nr) {
    case 2: return attn_dots_shared<2>(q, Dp, k, D, dots);
    case 3: return attn_dots_shared<3>(q, Dp, k, D, dots);
    case 4: return attn_dots_shared<4>(q, Dp, k, D, dots);
    case 5: return attn_dots_shared<5>(q, Dp, k, D, dots);
    case 6: return attn_dots_shared<6>(q, Dp, k, D, dots);
    case 7: return attn_dots_shared<7>(q, Dp, k, D, dots);
    default: return attn_dots_shared<8>(q, Dp, k, D, dots);
  }
}
template <class T>
inline void attn_pv_shared(int64_t nr, const float* p, int64_t n, const T* v, const int64_t* off, int64_t Dv,
                           float* out, int64_t ldo) {
  switch (nr) {
    case 2: return attn_pv_shared<2>(p, n, v, off, Dv, out, ldo);
    case 3: return attn_pv_shared<3>(p, n, v, off, Dv, out, ldo);
    case 4: return attn_pv_shared<4>(p, n, v, off, Dv, out, ldo);
    case 5: return attn_pv_shared<5>(p, n, v, off, Dv, out, ldo);
    case 6: return attn_pv_shared<6>(p, n, v, off, Dv, out, ldo);
    case 7: return attn_pv_shared<7>(p, n, v, off, Dv, out, ldo);
    default: return attn_pv_shared<8>(p, n, v, off, Dv, out, ldo);
  }
}
static_assert(kAttnRows == 8, "attn_dots_shared / attn_pv_shared dispatch up to 8 rows");

// Keys and values are rows of a few hundred bytes, read once per decode step from memory (the weights
// streamed since the previous step have evicted them), in runs too short for the hardware prefetcher to
// pay off. The kernel asks for rows kAttnPrefetch ahead of their use instead, so that many misses are in
// flight at once. GPT-2's 12 heads after a layer's weights, alternating runs: 30 keys, batch 1 ~41 ->
// ~23 us, batch 8 ~150 -> ~120 us; 144 keys, batch 1 ~110 -> ~80 us (64 rows ahead; 24 gave ~110).
constexpr int64_t kAttnPrefetch = 64;

inline void attn_prefetch(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
  __builtin_prefetch(p + bytes - 1, 0, 3);  // a row that does not start on a cache line ends on one more
}

// Work item `item` = b * groups + group: query rows [group * rows, + rows) of batch row b (rows <= kAttnRows) against
// that row's keys, a row r = (kv * Tq + t) * G + g being query t of head kv * G + g. Rows of neighbouring kv heads
// share an item, so that its pass over the keys reads each key position's heads side by side (one run of memory in
// the usual (B, C, Hkv, D) cache) instead of one 128-256-byte row per head thousands of bytes apart.
// scratch: decode_attention_scratch floats.
template <class T>
inline void attend(const DecodeAttnArgs& a, int64_t item, int64_t rows, float* scratch) {
  const int64_t G = a.H / a.Hkv, per_kv = a.Tq * G, R = a.Hkv * per_kv, groups = (R + rows - 1) / rows;
  const int64_t b = item / groups, r0 = item % groups * rows, nr = R - r0 < rows ? R - r0 : rows;
  const int64_t L = a.seqlens[b], Dp = attn_padded(a.D), Dvp = attn_padded(a.Dv);
  const int64_t ring = a.C - a.sinks;
  float* qf = scratch;                   // (nr, Dp) the queries in fp32, zero-padded
  float* acc = qf + kAttnRows * Dp;      // (nr, Dv) sum of p * v
  float* score = acc + kAttnRows * Dvp;  // (nr, n) scores, then probabilities
  const int64_t cap = attn_key_capacity(a);
  int64_t* koff = reinterpret_cast<int64_t*>(score + kAttnRows * cap);  // (n,) key rows' offsets in the cache
  int64_t* voff = koff + cap;                                           // (n,) value rows' offsets
  int64_t qpos[kAttnRows], head[kAttnRows];
  const T* kh[kAttnRows];  // each row's kv head in the caches
  const T* vh[kAttnRows];
  // The keys: positions [lo, L) (lo: the oldest any query of the group sees) and the sinks below lo.
  int64_t lo = L;
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i, kv = r / per_kv, t = r % per_kv / G;
    qpos[i] = L - a.Tq + t;
    head[i] = kv * G + r % G;
    kh[i] = static_cast<const T*>(a.k) + kv * a.k_sh;
    vh[i] = static_cast<const T*>(a.v) + kv * a.v_sh;
    if (qpos[i] < 0) {  // sees no key; its dots (a shared pass computes them) are dropped
      for (int64_t d = 0; d < Dp; ++d) qf[i * Dp + d] = 0.0f;
      continue;
    }
    const int64_t first = a.window > 0 && qpos[i] - a.window + 1 > 0 ? qpos[i] - a.window + 1 : 0;
    lo = first < lo ? first : lo;
    const T* q = static_cast<const T*>(a.q) + b * a.q_sb + t * a.q_st + head[i] * a.q_sh;
    for (int64_t d = 0; d < Dp; ++d) qf[i * Dp + d] = d < a.D ? to_f32(q[d]) : 0.0f;
  }
  const int64_t nsink = a.window > 0 ? (a.sinks < lo ? a.sinks : lo) : 0;
  const int64_t n = nsink + (L - lo);  // 0 when every query sits at a negative position
  auto position = [&](int64_t j) { return j < nsink ? j : lo + (j - nsink); };
  if (a.block_table != nullptr) {
    const int64_t* pages = a.block_table + b * a.bt_stride;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t s = position(j), page = pages[s / a.page_size], row = s % a.page_size;
      koff[j] = page * a.k_sb + row * a.k_sc;
      voff[j] = page * a.v_sb + row * a.v_sc;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t s = position(j), slot = s < a.sinks ? s : a.sinks + (s - a.sinks) % ring;
      koff[j] = b * a.k_sb + slot * a.k_sc;
      voff[j] = b * a.v_sb + slot * a.v_sc;
    }
  }
  // The item's kv heads [kv0, kv0 + heads): their rows at a key position are prefetched together.
  const int64_t kv0 = r0 / per_kv, heads = (r0 + nr - 1) / per_kv - kv0 + 1;
  const T* kb = static_cast<const T*>(a.k) + kv0 * a.k_sh;
  const T* vb = static_cast<const T*>(a.v) + kv0 * a.v_sh;
  auto prefetch_heads = [&](const T* base, int64_t off, int64_t head_stride, int64_t bytes) {
    for (int64_t h = 0; h < heads; ++h) attn_prefetch(base + off + h * head_stride, bytes);
  };
  // Pass 1: scores (-inf where a query does not see the key), 4 keys at a time (kSharedKeys for rows of one kv
  // head); a partial group repeats its first key (a written slot), whose extra dots are dropped.
  constexpr float kNegInf = -__builtin_inff();
  const int64_t kbytes = a.D * static_cast<int64_t>(sizeof(T)), vbytes = a.Dv * static_cast<int64_t>(sizeof(T));
  // Keys asked for `ahead` positions before their use: kAttnPrefetch rows of one head, as many bytes for more heads.
  const int64_t ahead = kAttnPrefetch / heads > 4 ? kAttnPrefetch / heads : 4;
  const bool shared = heads == 1 && nr > 1;
  const int64_t step = shared ? kSharedKeys : 4;
  auto put = [&](int64_t i, int64_t j, float dot) {
    const int64_t s = position(j), dist = qpos[i] - s;
    const bool seen = dist >= 0 && (a.window <= 0 || dist < a.window || s < a.sinks);
    float x = kNegInf;
    if (seen) {
      x = dot * a.scale;
      if (a.alibi != nullptr) x -= a.alibi[head[i]] * static_cast<float>(dist);
      if (a.rel_bias != nullptr) x += a.rel_bias[head[i] * a.rel_len + (dist < a.rel_len ? dist : a.rel_len - 1)];
    }
    score[i * n + j] = x;
  };
  for (int64_t j = 0; j < n && j < ahead; ++j) prefetch_heads(kb, koff[j], a.k_sh, kbytes);
  for (int64_t j0 = 0; j0 < n; j0 += step) {
    const int64_t nk = n - j0 < step ? n - j0 : step;
    for (int64_t j = j0; j < j0 + nk; ++j) {  // the values of these keys (for pass 2), keys `ahead` positions ahead
      prefetch_heads(vb, voff[j], a.v_sh, vbytes);
      if (j + ahead < n) prefetch_heads(kb, koff[j + ahead], a.k_sh, kbytes);
    }
    if (shared) {
      const T* k[kSharedKeys];
      for (int u = 0; u < kSharedKeys; ++u) k[u] = kb + koff[j0 + (u < nk ? u : 0)];
      float dots[kAttnRows * kSharedKeys];
      attn_dots_shared(nr, qf, Dp, k, a.D, dots);
      for (int64_t i = 0; i < nr; ++i)
        for (int64_t u = 0; u < nk; ++u) put(i, j0 + u, dots[i * kSharedKeys + u]);
      continue;
    }
    for (int64_t i = 0; i < nr; ++i) {
      const T* k[4];
      for (int u = 0; u < 4; ++u) k[u] = kh[i] + koff[j0 + (u < nk ? u : 0)];
      float dots[4];
      attn_dot4(qf + i * Dp, k, a.D, dots);
      for (int64_t u = 0; u < nk; ++u) put(i, j0 + u, dots[u]);
    }
  }
  // Pass 2: softmax per query (attn_exp), p * v, the output.
  float sum[kAttnRows], m[kAttnRows];
  for (int64_t i = 0; i < nr; ++i) sum[i] = attn_exp(score + i * n, n, m[i]);
  if (shared)
    attn_pv_shared(nr, score, n, vb, voff, a.Dv, acc, Dvp);
  else
    for (int64_t i = 0; i < nr; ++i) attn_pv(score + i * n, vh[i], voff, n, a.Dv, acc + i * Dvp);
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t t = (r0 + i) % per_kv / G;
    const float inv = sum[i] > 0.0f ? 1.0f / sum[i] : 0.0f;  // a query that sees no key outputs 0
    if (a.lse != nullptr)
      a.lse[(b * a.Tq + t) * a.H + head[i]] = sum[i] > 0.0f ? m[i] + __builtin_logf(sum[i]) : kNegInf;
    T* o = static_cast<T*>(a.o) + ((b * a.Tq + t) * a.H + head[i]) * a.Dv;
    for (int64_t d = 0; d < a.Dv; ++d) {
      const float x = n > 0 ? acc[i * Dvp + d] * inv : 0.0f;
      if constexpr (sizeof(T) == 4)
        o[d] = x;
      else
        o[d] = f32_to_bf16(x);
    }
  }
}

inline void run_attend(const DecodeAttnArgs& a, int64_t item, int64_t rows, float* scratch) {
  if (a.dtype == DType::f32) return attend<float>(a, item, rows, scratch);
  attend<uint16_t>(a, item, rows, scratch);
}
