// The body of the decode attention kernel (attention.h), written once over the vector type V of the
// linear kernel and included by the per-ISA files right after linear_kernel.h (whose bf16 helpers it
// uses), inside their namespaces. Besides linear_kernel.h's operations V provides set1(f) and
// store(p, reg). Like linear_kernel.h it includes nothing and calls no standard-library code (expf is
// the compiler builtin): it is compiled once per instruction set.

inline float to_f32(float x) { return x; }
inline float to_f32(uint16_t h) { return bf16_to_f32(h); }

// Floats per row of the padded query and accumulator copies (a multiple of every ISA's lane count).
inline int64_t attn_padded(int64_t d) { return (d + 15) / 16 * 16; }

// sum_d q[d] * k[d]: q is zero-padded to whole vectors, k is read exactly D elements.
template <class T>
inline float attn_dot(const float* q, const T* k, int64_t D) {
  typename V::reg acc = V::zero();
  int64_t d = 0;
  for (; d + V::L <= D; d += V::L) acc = V::fma(V::load(q + d), V::load(k + d), acc);
  float s = V::hsum(acc);
  for (; d < D; ++d) s += q[d] * to_f32(k[d]);
  return s;
}

// acc[d] += p * v[d] for d < Dv.
template <class T>
inline void attn_axpy(float* acc, float p, const T* v, int64_t Dv) {
  const typename V::reg pv = V::set1(p);
  int64_t d = 0;
  for (; d + V::L <= Dv; d += V::L) V::store(acc + d, V::fma(pv, V::load(v + d), V::load(acc + d)));
  for (; d < Dv; ++d) acc[d] += p * to_f32(v[d]);
}

// Work item `item` = ((b * Hkv) + kv head) * groups + group: the group's query rows r = t * G + g
// (query t, head kv * G + g) against their row's keys. scratch: decode_attention_scratch floats.
template <class T>
inline void attend(const DecodeAttnArgs& a, int64_t item, float* scratch) {
  const int64_t G = a.H / a.Hkv, R = a.Tq * G, groups = (R + kAttnRows - 1) / kAttnRows;
  const int64_t group = item % groups, kv = item / groups % a.Hkv, b = item / groups / a.Hkv;
  const int64_t r0 = group * kAttnRows, nr = R - r0 < kAttnRows ? R - r0 : kAttnRows;
  const int64_t L = a.seqlens[b], Dp = attn_padded(a.D), Dvp = attn_padded(a.Dv);
  const int64_t ring = a.C - a.sinks;
  float* qf = scratch;                    // (nr, Dp) the queries in fp32, zero-padded
  float* acc = qf + kAttnRows * Dp;       // (nr, Dvp) sum of p * v
  float* score = acc + kAttnRows * Dvp;   // (nr, n) scores, then probabilities
  int64_t qpos[kAttnRows], head[kAttnRows];
  // The keys: positions [lo, L) (lo: the oldest any query of the group sees) and the sinks below lo.
  int64_t lo = L;
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i, t = r / G;
    qpos[i] = L - a.Tq + t;
    head[i] = kv * G + r % G;
    if (qpos[i] < 0) continue;
    const int64_t first = a.window > 0 && qpos[i] - a.window + 1 > 0 ? qpos[i] - a.window + 1 : 0;
    lo = first < lo ? first : lo;
    const T* q = static_cast<const T*>(a.q) + b * a.q_sb + t * a.q_st + head[i] * a.q_sh;
    for (int64_t d = 0; d < Dp; ++d) qf[i * Dp + d] = d < a.D ? to_f32(q[d]) : 0.0f;
    for (int64_t d = 0; d < Dvp; ++d) acc[i * Dvp + d] = 0.0f;
  }
  const int64_t nsink = a.window > 0 ? (a.sinks < lo ? a.sinks : lo) : 0;
  const int64_t n = nsink + (L - lo);  // 0 when every query sits at a negative position
  const T* kb = static_cast<const T*>(a.k) + b * a.k_sb + kv * a.k_sh;
  const T* vb = static_cast<const T*>(a.v) + b * a.v_sb + kv * a.v_sh;
  auto position = [&](int64_t j) { return j < nsink ? j : lo + (j - nsink); };
  auto slot = [&](int64_t s) { return s < a.sinks ? s : a.sinks + (s - a.sinks) % ring; };
  // Pass 1: scores (-inf where a query does not see the key), each key row read once for all queries.
  constexpr float kNegInf = -__builtin_inff();
  for (int64_t j = 0; j < n; ++j) {
    const int64_t s = position(j);
    const T* k = kb + slot(s) * a.k_sc;
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t dist = qpos[i] - s;
      const bool seen = dist >= 0 && (a.window <= 0 || dist < a.window || s < a.sinks);
      float x = kNegInf;
      if (seen) {
        x = attn_dot(qf + i * Dp, k, a.D) * a.scale;
        if (a.alibi != nullptr) x -= a.alibi[head[i]] * static_cast<float>(dist);
        if (a.rel_bias != nullptr) x += a.rel_bias[head[i] * a.rel_len + (dist < a.rel_len ? dist : a.rel_len - 1)];
      }
      score[i * n + j] = x;
    }
  }
  // Pass 2: softmax per query (max first: exp never overflows), then p * v over the keys.
  float total[kAttnRows];
  for (int64_t i = 0; i < nr; ++i) {
    float* p = score + i * n;
    float m = kNegInf;
    for (int64_t j = 0; j < n; ++j) m = p[j] > m ? p[j] : m;
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
      p[j] = p[j] == kNegInf ? 0.0f : __builtin_expf(p[j] - m);
      sum += p[j];
    }
    total[i] = sum;
  }
  for (int64_t j = 0; j < n; ++j) {
    const T* v = vb + slot(position(j)) * a.v_sc;
    for (int64_t i = 0; i < nr; ++i)
      if (score[i * n + j] != 0.0f) attn_axpy(acc + i * Dvp, score[i * n + j], v, a.Dv);  // never 0 * NaN
  }
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i, t = r / G;
    const float inv = total[i] > 0.0f ? 1.0f / total[i] : 0.0f;  // a query that sees no key outputs 0
    T* o = static_cast<T*>(a.o) + ((b * a.Tq + t) * a.H + head[i]) * a.Dv;
    for (int64_t d = 0; d < a.Dv; ++d) {
      const float x = acc[i * Dvp + d] * inv;
      if constexpr (sizeof(T) == 4)
        o[d] = x;
      else
        o[d] = f32_to_bf16(x);
    }
  }
}

inline void run_attend(const DecodeAttnArgs& a, int64_t item, float* scratch) {
  if (a.dtype == DType::f32) return attend<float>(a, item, scratch);
  attend<uint16_t>(a, item, scratch);
}
