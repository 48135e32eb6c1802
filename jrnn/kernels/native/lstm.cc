// The plain LSTM's and the plain GRU's two recurrent loops of backward="bptt" on a CPU, as XLA FFI
// handlers (the GRU's: below, "the GRU").
//
// jrnn_lstm_forward runs every step of a layer: a = xw_t + b + h_{t-1} w_h, the gates
// [i f g o] = [σ σ tanh σ](a), c_t = f c_{t-1} + i g, h_t = o tanh(c_t); it writes the gates (the
// reserve of jrnn.scan.forward), the carries after each step and the last carry. Each step reads
// its row of xw before it writes the same row of the gates, so the two may share a buffer.
// jrnn_lstm_backward runs the reverse loop of jrnn.scan.backward: from the cotangents of the
// outputs and of the last carry it writes d_a (the gradient of the pre-activations) over the gates
// and returns the carry's cotangent at the start. The weight gradients and the input gradient stay
// with XLA (one product each over the whole sequence).
//
// Why a native loop: a step's recurrent product is small ((32, 128) @ (128, 512) in the grid) and
// XLA runs it on one thread, then dispatches the gate arithmetic as ten separate fusions. Here each
// step's product is split by hidden units over XLA's intra-op threads (every thread computes all
// four gates of its units), and the gate arithmetic follows on the product's tile while it is in
// the L1 cache: one barrier per step. The maths is exactly jrnn.cells.lstm.LSTMCell's plain
// forward_step and backward_step (and GRUCell's), which remain the reference (tests compare the
// two); exp is this file's own (a vectorized polynomial), tanh is 2σ(2x) − 1.
//
// Layout: sequences are (n, B, W) (time_axis = 0) or (B, n, W) (time_axis = 1); float32 or
// float64; hidden size a multiple of 2L (L = values per 256-bit vector: 8 floats, 4 doubles).
// Built for x86-64 with AVX2 and FMA (setup.py: -mavx2 -mfma, tuned for the building machine).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include <immintrin.h>
#include <sys/mman.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <class T>
struct VecOf {
  typedef T type __attribute__((vector_size(32)));
};
template <class T>
using Vec = typename VecOf<T>::type;  // one 256-bit register: 8 floats or 4 doubles

template <class T>
inline Vec<T> Load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, 32);
  return v;
}

template <class T>
inline void Store(T* p, Vec<T> v) {
  std::memcpy(p, &v, 32);
}

inline Vec<float> Broadcast(float a) { return _mm256_set1_ps(a); }
inline Vec<double> Broadcast(double a) { return _mm256_set1_pd(a); }

// exp by range reduction x = n ln2 + r, |r| <= ln2 / 2, a polynomial in r and 2^n from the
// exponent bits (Cephes' expf coefficients for float; the Taylor series to r^13 for double,
// whose remainder is below 1e-17 relative).
inline Vec<float> Exp(Vec<float> x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const Vec<float> n = _mm256_round_ps(x * 1.44269504088896341f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const Vec<float> r = x - n * 0.693359375f + n * 2.12194440e-4f;
  Vec<float> p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return p * Vec<float>(_mm256_castsi256_ps(e));
}

inline Vec<double> Exp(Vec<double> x) {
  x = _mm256_min_pd(_mm256_max_pd(x, _mm256_set1_pd(-708.0)), _mm256_set1_pd(708.0));
  const Vec<double> n = _mm256_round_pd(x * 1.4426950408889634074, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const Vec<double> r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6;
  // Σ r^k / k!, k = 0..13, by Horner
  Vec<double> p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const __m256i k = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n));
  const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(k, _mm256_set1_epi64x(1023)), 52);
  return p * Vec<double>(_mm256_castsi256_pd(e));
}

template <class T>
inline Vec<T> Sigmoid(Vec<T> x) {
  return T(1) / (Exp(-x) + T(1));
}

template <class T>
inline Vec<T> Tanh(Vec<T> x) {  // 2σ(2x) − 1: within an ulp of 1 of tanh
  return T(2) / (Exp(T(-2) * x) + T(1)) - T(1);
}

// A spin barrier for the threads of one call (sense by generation); yields after a while so that
// an oversubscribed machine still makes progress.
class Barrier {
 public:
  void Reset(int n) { n_ = n; }
  void Wait() {
    if (n_ == 1) return;
    int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 20000) {
        __builtin_ia32_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  int n_ = 1;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// Runs work(tid, threads) on the caller and on up to n - 1 helpers from XLA's own intra-op thread
// pool (the threads that would otherwise wait for this call), and waits for them. The work gets
// the final thread count, and `barrier` is set to it. A helper joins only if it starts within
// kJoinMicros of the call: a pool whose threads are busy (XLA running two of these calls at once,
// each waiting for the other's thread) leaves the call to the threads that did join, so no call
// waits on a thread that cannot come. Threads of our own would compete with XLA's for the cores
// and, created per call, land on a busy core often enough to cost more than they save.
constexpr int kJoinMicros = 200;

struct Group {
  std::atomic<int> joined{0};       // helpers that claimed a thread index
  std::atomic<int> threads{0};      // the final count, once the caller closed the group (0: open)
  std::atomic<int> finished{0};     // helpers that are done with the work
};

template <class F>
void Parallel(ffi::ThreadPool& pool, int n, Barrier& barrier, F work) {
  n = static_cast<int>(std::min<int64_t>(n, std::max<int64_t>(pool.num_threads(), 1)));
  if (n <= 1) {
    barrier.Reset(1);
    work(0, 1);
    return;
  }
  auto group = std::make_shared<Group>();
  std::function<void(int, int)> run = [&work](int tid, int threads) { work(tid, threads); };
  for (int i = 1; i < n; ++i) {
    pool.Schedule([group, &run, &barrier, n] {
      // claim an index, unless the group already closed without us
      int tid = group->joined.load(std::memory_order_acquire);
      do {
        if (group->threads.load(std::memory_order_acquire) != 0 || tid >= n - 1) return;
      } while (!group->joined.compare_exchange_weak(tid, tid + 1, std::memory_order_acq_rel));
      int threads;
      while ((threads = group->threads.load(std::memory_order_acquire)) == 0) __builtin_ia32_pause();
      if (tid + 1 < threads) run(tid + 1, threads);
      group->finished.fetch_add(1, std::memory_order_acq_rel);
    });
  }
  // wait for the helpers to join, then close the group with the count that did
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kJoinMicros);
  int joined = 0;
  for (int spins = 0;; ++spins) {
    joined = group->joined.load(std::memory_order_acquire);
    if (joined == n - 1 || (spins % 64 == 63 && std::chrono::steady_clock::now() > until)) break;
    __builtin_ia32_pause();
  }
  // close the group with the count that joined; a helper claiming after the read below gets an
  // index that does not fit and only reports
  const int threads = joined + 1;
  barrier.Reset(threads);
  group->threads.store(threads, std::memory_order_release);
  run(0, threads);
  // every helper that claimed an index reports, whether it ran or not
  while (group->finished.load(std::memory_order_acquire) != group->joined.load(std::memory_order_acquire))
    __builtin_ia32_pause();
}

// How many threads a loop of `blocks` column blocks with `flops` per step gets: one per core up to
// the blocks, none below about 2^17 FLOPs per step each (there a barrier costs more than it saves);
// JRNN_NATIVE_THREADS overrides the core count.
int NumThreads(ffi::ThreadPool& pool, int64_t blocks, double flops) {
  int cores = static_cast<int>(pool.num_threads());
  if (const char* env = std::getenv("JRNN_NATIVE_THREADS")) cores = std::atoi(env);
  int64_t by_work = static_cast<int64_t>(flops / (1 << 17));
  int64_t n = std::min<int64_t>({std::max(cores, 1), blocks, std::max<int64_t>(by_work, 1)});
  return static_cast<int>(std::max<int64_t>(n, 1));
}

// out (MR rows, stride ldo; 2L columns) = a (MR rows, stride lda) @ p (K rows of 2L values, stride
// ldp), or += with `accumulate`.
template <class T, int MR>
inline void Tile(const T* __restrict a, int64_t lda, const T* __restrict p, int64_t ldp, int64_t K,
                 T* __restrict out, int64_t ldo, bool accumulate) {
  typedef Vec<T> V;
  constexpr int L = 32 / sizeof(T);
  V acc[MR][2];
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = accumulate ? Load(out + r * ldo) : V{};
    acc[r][1] = accumulate ? Load(out + r * ldo + L) : V{};
  }
  for (int64_t k = 0; k < K; ++k) {
    V w0 = Load(p + k * ldp), w1 = Load(p + k * ldp + L);
    asm("" : "+x"(w0), "+x"(w1));  // keep the panel's row in registers across the MR rows
    for (int r = 0; r < MR; ++r) {
      const V x = Broadcast(a[r * lda + k]);
      acc[r][0] += x * w0;
      acc[r][1] += x * w1;
    }
  }
  for (int r = 0; r < MR; ++r) {
    Store(out + r * ldo, acc[r][0]);
    Store(out + r * ldo + L, acc[r][1]);
  }
}

// Rows per tile: 12 accumulators, two panel vectors and a broadcast fit AVX2's 16 vector registers
// (12 rows in AVX-512's 32 registers measured slower: 1.25x at hidden size 2048).
constexpr int kRows = 6;
constexpr int64_t kDepth = 256;  // products per pass: a slice of kDepth x 2L of the panel stays in L1

template <class T>
void TileRows(int rows, const T* a, int64_t lda, const T* p, int64_t ldp, int64_t K, T* out, int64_t ldo,
              bool acc) {
  switch (rows) {
    case 6: return Tile<T, 6>(a, lda, p, ldp, K, out, ldo, acc);
    case 5: return Tile<T, 5>(a, lda, p, ldp, K, out, ldo, acc);
    case 4: return Tile<T, 4>(a, lda, p, ldp, K, out, ldo, acc);
    case 3: return Tile<T, 3>(a, lda, p, ldp, K, out, ldo, acc);
    case 2: return Tile<T, 2>(a, lda, p, ldp, K, out, ldo, acc);
    default: return Tile<T, 1>(a, lda, p, ldp, K, out, ldo, acc);
  }
}

template <class T>
void Product(int64_t B, const T* a, int64_t lda, const T* p, int64_t ldp, int64_t K, T* out, int64_t ldo,
             bool accumulate = false) {
  const int64_t tiles = (B + kRows - 1) / kRows;  // as few tiles as the registers allow, rows spread evenly
  for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
    const int64_t depth = std::min(kDepth, K - k0);
    for (int64_t i = 0, r = 0; i < tiles; ++i) {
      const int64_t rows = (B - r) / (tiles - i);
      TileRows<T>(static_cast<int>(rows), a + r * lda + k0, lda, p + k0 * ldp, ldp, depth, out + r * ldo, ldo,
                  accumulate || k0 > 0);
      r += rows;
    }
  }
}

// Offsets of row (t, b) of a sequence of width w: time-major (n, B, w) or batch-major (B, n, w).
struct Layout {
  int64_t n, B;
  bool batch_major;
  int64_t Row(int64_t t, int64_t b, int64_t w) const { return (batch_major ? b * n + t : t * B + b) * w; }
  int64_t Stride(int64_t w) const { return (batch_major ? n : 1) * w; }  // from row b to row b + 1
};

// Huge pages. XLA allocates a call's temporaries afresh (glibc maps anything above 32 MiB anew on
// every call), and so does this file for the packed weights: every 4 KiB page of such a buffer
// costs a page fault on its first write, 2-3 µs each on the measuring machine, up to about a tenth
// of the gradient at hidden size 512 and up (benchmarks/NOTES.md, section 16). Advised before the first
// write, transparent huge pages (THP in its "madvise" or "always" mode) take one fault per 2 MiB;
// where THP is off the advice is ignored. Advice only: no content changes.
constexpr uintptr_t kHugePage = uintptr_t(2) << 20;

void AdviseHugePages(void* data, size_t bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = (begin + bytes) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}

// An array of n values for the packed weights; from a huge page on, 2 MiB-aligned and advised.
template <class T>
using Array = std::unique_ptr<T[], void (*)(void*)>;

template <class T>
Array<T> NewArray(int64_t n) {
  const size_t bytes = static_cast<size_t>(n) * sizeof(T);
  if (bytes < kHugePage) return Array<T>(static_cast<T*>(std::malloc(std::max<size_t>(bytes, 1))), std::free);
  const size_t whole = (bytes + kHugePage - 1) & ~(kHugePage - 1);
  void* data = std::aligned_alloc(kHugePage, whole);
  if (data != nullptr) AdviseHugePages(data, whole);
  return Array<T>(static_cast<T*>(data), std::free);
}

// Packs w_h (H, gates·H) for the forward's tiles, by blocks of U hidden units:
// panel[u][k][gate * U + l] = w_h[k, gate * H + u * U + l].
template <class T, int U>
Array<T> ForwardPanels(const T* w_h, int64_t H, int gates) {
  const int64_t G = gates * H;
  Array<T> panel = NewArray<T>(H * G);
  if (!panel) return panel;
  for (int64_t u = 0; u < H / U; ++u)
    for (int64_t k = 0; k < H; ++k)
      for (int g = 0; g < gates; ++g)
        std::memcpy(&panel[(u * H + k) * gates * U + g * U], w_h + k * G + g * H + u * U, U * sizeof(T));
  return panel;
}

// Packs w_h (H, G) transposed for the backward's tiles, by blocks of 2L hidden units:
// panel[v][k][l] = w_h[v * 2L + l, k], k over the G gate columns.
template <class T>
Array<T> BackwardPanels(const T* w_h, int64_t H, int64_t G) {
  constexpr int L = 32 / sizeof(T);
  Array<T> panel = NewArray<T>(H * G);
  if (!panel) return panel;
  for (int64_t v = 0; v < H / (2 * L); ++v)
    for (int64_t k = 0; k < G; ++k)
      for (int l = 0; l < 2 * L; ++l) panel[(v * G + k) * 2 * L + l] = w_h[(v * 2 * L + l) * G + k];
  return panel;
}

// The last carry of a forward loop (the carries after each step `seq`, or `first` for no step).
template <class T>
void CopyLast(const T* seq, const T* first, T* out, const Layout& lay, int64_t H, bool reverse) {
  for (int64_t b = 0; b < lay.B; ++b)
    std::memcpy(out + b * H, lay.n == 0 ? first + b * H : seq + lay.Row(reverse ? 0 : lay.n - 1, b, H),
                H * sizeof(T));
}

// The forward loop of either cell. Each thread takes blocks of U hidden units; per step it computes
// the recurrent product h_{t-1} w_h for all `gates` gates' columns of a block into `tiles`
// (B, gates · U), then block(s, t, tp, j0, h_prev, ld_prev, tiles) does the gate arithmetic for the
// block's units j0 ... j0 + U - 1 (h_prev: the carries entering step t, rows ld_prev apart) and
// writes the step's carries into `hs`, which the next step reads: one barrier per step.
template <class T, int U, class Block>
bool ForwardLoop(ffi::ThreadPool& pool, const T* w_h, const T* h0, const T* hs, const Layout& lay, int64_t H,
                 int gates, bool reverse, Block block) {
  constexpr int L = 32 / sizeof(T);
  const int64_t B = lay.B, blocks = H / U, width = gates * U;
  const Array<T> panel = ForwardPanels<T, U>(w_h, H, gates);
  if (!panel) return false;
  const int threads = NumThreads(pool, blocks, 2.0 * B * H * gates * H);
  Barrier barrier;
  Parallel(pool, threads, barrier, [&](int tid, int threads) {
    const int64_t u0 = blocks * tid / threads, u1 = blocks * (tid + 1) / threads;
    std::vector<T> tiles(B * width);  // the product for one block of units: (B, gates x U)
    for (int64_t s = 0; s < lay.n; ++s) {
      const int64_t t = reverse ? lay.n - 1 - s : s, tp = reverse ? t + 1 : t - 1;
      const T* h_prev = s == 0 ? h0 : hs + lay.Row(tp, 0, H);
      const int64_t ld_prev = s == 0 ? H : lay.Stride(H);
      for (int64_t u = u0; u < u1; ++u) {
        const T* p = panel.get() + u * H * width;
        for (int64_t col = 0; col < width; col += 2 * L)  // tiles of 2L columns
          Product<T>(B, h_prev, ld_prev, p + col, width, H, tiles.data() + col, width);
        block(s, t, tp, u * U, h_prev, ld_prev, tiles.data());
      }
      barrier.Wait();
    }
  });
  return true;
}

// The reverse loop of either cell, against the forward (its last step first). Each thread takes
// blocks of 2L hidden units; per step, units(s, t, tp, b, j0, width, d_h) turns the cotangent
// d_h (row b of the carry's, the thread's units j0 ... j0 + width - 1) into the step's
// pre-activation gradients, written in d_pre (G columns per row), and leaves in d_h the part of
// d_h_{t-1} that bypasses the product; after a barrier, the thread adds (or with `accumulate`
// false, writes) d_pre_t w_hᵀ for its units. d_h0 gets the cotangent entering the first step.
template <class T, class Units>
bool ReverseLoop(ffi::ThreadPool& pool, const T* w_h, const T* d_h_T, const T* d_pre, T* d_h0, const Layout& lay,
                 int64_t H, int64_t G, bool reverse, bool accumulate, Units units) {
  constexpr int L = 32 / sizeof(T);
  const int64_t B = lay.B, blocks = H / (2 * L);
  const Array<T> panel = BackwardPanels(w_h, H, G);
  if (!panel) return false;
  std::vector<T> dh(d_h_T, d_h_T + B * H);  // the carry's cotangent; a thread keeps to its units' columns
  const int threads = NumThreads(pool, blocks, 2.0 * B * H * G);
  Barrier barrier;
  Parallel(pool, threads, barrier, [&](int tid, int threads) {
    const int64_t v0 = blocks * tid / threads, v1 = blocks * (tid + 1) / threads;
    const int64_t j0 = v0 * 2 * L, width = (v1 - v0) * 2 * L;
    for (int64_t s = 0; s < lay.n; ++s) {
      const int64_t t = reverse ? s : lay.n - 1 - s, tp = reverse ? t + 1 : t - 1;
      for (int64_t b = 0; b < B; ++b) units(s, t, tp, b, j0, width, dh.data() + b * H + j0);
      barrier.Wait();  // every column of d_pre_t written
      const T* dp_t = d_pre + lay.Row(t, 0, G);
      for (int64_t v = v0; v < v1; ++v)
        Product<T>(B, dp_t, lay.Stride(G), panel.get() + v * G * 2 * L, 2 * L, G, dh.data() + v * 2 * L, H,
                   accumulate);
    }
  });
  std::memcpy(d_h0, dh.data(), B * H * sizeof(T));
  return true;
}

// -- the LSTM ------------------------------------------------------------------------------------

template <class T>
bool Forward(ffi::ThreadPool& pool, const T* xw, const T* bias, const T* w_h, const T* h0, const T* c0, T* gates,
             T* hs, T* cs, T* h_T, T* c_T, int64_t n, int64_t B, int64_t H, bool reverse, bool batch_major) {
  constexpr int L = 32 / sizeof(T);
  const int64_t G = 4 * H;
  const Layout lay{n, B, batch_major};
  const bool done = ForwardLoop<T, L>(
      pool, w_h, h0, hs, lay, H, 4, reverse,
      [&](int64_t s, int64_t t, int64_t tp, int64_t j0, const T*, int64_t ld_prev, const T* tiles) {
        const T* c_prev = s == 0 ? c0 : cs + lay.Row(tp, 0, H);
        for (int64_t b = 0; b < B; ++b) {
          const T* x = xw + lay.Row(t, b, G) + j0;
          const T* bb = bias + j0;
          const T* cp = c_prev + b * ld_prev + j0;
          const T* tb = tiles + b * 4 * L;
          T* gt = gates + lay.Row(t, b, G) + j0;
          T* c = cs + lay.Row(t, b, H) + j0;
          T* h = hs + lay.Row(t, b, H) + j0;
          const Vec<T> i = Sigmoid<T>(Load(tb) + Load(x) + Load(bb));
          const Vec<T> f = Sigmoid<T>(Load(tb + L) + Load(x + H) + Load(bb + H));
          const Vec<T> g = Tanh<T>(Load(tb + 2 * L) + Load(x + 2 * H) + Load(bb + 2 * H));
          const Vec<T> o = Sigmoid<T>(Load(tb + 3 * L) + Load(x + 3 * H) + Load(bb + 3 * H));
          const Vec<T> c_new = f * Load(cp) + i * g;
          Store(c, c_new);
          Store(h, o * Tanh<T>(c_new));
          Store(gt, i);
          Store(gt + H, f);
          Store(gt + 2 * H, g);
          Store(gt + 3 * H, o);
        }
      });
  if (!done) return false;
  CopyLast(hs, h0, h_T, lay, H, reverse);
  CopyLast(cs, c0, c_T, lay, H, reverse);
  return true;
}

template <class T>
bool Backward(ffi::ThreadPool& pool, const T* gates, const T* cs, const T* c_first, const T* d_ys, const T* d_h_T,
              const T* d_c_T, const T* w_h, T* d_a, T* d_h0, T* d_c0, int64_t n, int64_t B, int64_t H, bool reverse,
              bool batch_major) {
  constexpr int L = 32 / sizeof(T);
  const int64_t G = 4 * H;
  const Layout lay{n, B, batch_major};
  std::vector<T> dc(d_c_T, d_c_T + B * H);  // the cell state's cotangent, by the same columns as d_h's
  const bool done = ReverseLoop<T>(
      pool, w_h, d_h_T, d_a, d_h0, lay, H, G, reverse, false,
      [&](int64_t s, int64_t t, int64_t tp, int64_t b, int64_t j0, int64_t width, T* dhb) {
        const T* gt = gates + lay.Row(t, b, G) + j0;
        const T* c = cs + lay.Row(t, b, H) + j0;
        const T* cp = (s == n - 1 ? c_first + b * H : cs + lay.Row(tp, b, H)) + j0;
        const T* dy = d_ys + lay.Row(t, b, H) + j0;
        T* da = d_a + lay.Row(t, b, G) + j0;
        T* dcb = dc.data() + b * H + j0;
        for (int64_t l = 0; l < width; l += L) {
          const Vec<T> i = Load(gt + l), f = Load(gt + H + l), g = Load(gt + 2 * H + l), o = Load(gt + 3 * H + l);
          const Vec<T> d_h = Load(dhb + l) + Load(dy + l);  // y_t = h_t: the output's cotangent joins
          const Vec<T> tanh_c = Tanh<T>(Load(c + l));
          const Vec<T> d_c = Load(dcb + l) + d_h * o * (T(1) - tanh_c * tanh_c);  // h = o tanh(c)
          Store(da + l, d_c * g * i * (T(1) - i));                   // c = ... + i g,  i = σ(a_i)
          Store(da + H + l, d_c * Load(cp + l) * f * (T(1) - f));    // c = f c_prev + ...,  f = σ(a_f)
          Store(da + 2 * H + l, d_c * i * (T(1) - g * g));           // g = tanh(a_g)
          Store(da + 3 * H + l, d_h * tanh_c * o * (T(1) - o));      // h = o tanh(c),  o = σ(a_o)
          Store(dcb + l, d_c * f);                                   // into the previous cell state
        }
        // d_h_{t-1} = d_a_t w_hᵀ (a = xp + h_{t-1} w_h): all of it through the product
      });
  if (!done) return false;
  std::memcpy(d_c0, dc.data(), B * H * sizeof(T));
  return true;
}

// -- the GRU (jrnn.cells.gru.GRUCell without options: the reset gate after the product) -------
//
// a step: hp = h_{t-1} w_h + b_h, [r z] = σ(xw_t + b_x + hp)[r z], n = tanh(xw_n + b_x[n] + r hp_n),
// h_t = (1 - z) n + z h_{t-1}. The reserve: [r z n] (n, B, 3H) and hp_n (n, B, H).

template <class T>
bool GruForward(ffi::ThreadPool& pool, const T* xw, const T* b_x, const T* b_h, const T* w_h, const T* h0, T* rzn,
                T* hp_n, T* hs, T* h_T, int64_t n, int64_t B, int64_t H, bool reverse, bool batch_major) {
  constexpr int L = 32 / sizeof(T);
  const int64_t G = 3 * H;
  const Layout lay{n, B, batch_major};
  const bool done = ForwardLoop<T, 2 * L>(
      pool, w_h, h0, hs, lay, H, 3, reverse,
      [&](int64_t, int64_t t, int64_t, int64_t j0, const T* h_prev, int64_t ld_prev, const T* tiles) {
        for (int64_t b = 0; b < B; ++b) {
          const T* x = xw + lay.Row(t, b, G) + j0;
          const T* hp = h_prev + b * ld_prev + j0;
          const T* tb = tiles + b * 6 * L;
          T* gt = rzn + lay.Row(t, b, G) + j0;
          T* hn = hp_n + lay.Row(t, b, H) + j0;
          T* h = hs + lay.Row(t, b, H) + j0;
          for (int l = 0; l < 2 * L; l += L) {
            const T* bx = b_x + j0 + l;
            const T* bh = b_h + j0 + l;
            const Vec<T> h_n = Load(tb + 4 * L + l) + Load(bh + 2 * H);
            const Vec<T> r = Sigmoid<T>((Load(x + l) + Load(bx)) + (Load(tb + l) + Load(bh)));
            const Vec<T> z = Sigmoid<T>((Load(x + H + l) + Load(bx + H)) + (Load(tb + 2 * L + l) + Load(bh + H)));
            const Vec<T> c = Tanh<T>((Load(x + 2 * H + l) + Load(bx + 2 * H)) + r * h_n);
            Store(h + l, (T(1) - z) * c + z * Load(hp + l));
            Store(gt + l, r);
            Store(gt + H + l, z);
            Store(gt + 2 * H + l, c);
            Store(hn + l, h_n);
          }
        }
      });
  if (!done) return false;
  CopyLast(hs, h0, h_T, lay, H, reverse);
  return true;
}

// The GRU's reverse loop: d_hp = [d_a_r d_a_z d_a_n r] over [r z n], d_a_n over hp_n, and
// d_h_{t-1} = d_h z + d_hp w_hᵀ.
template <class T>
bool GruBackward(ffi::ThreadPool& pool, const T* rzn, const T* hp_n, const T* hs, const T* h_first, const T* d_ys,
                 const T* d_h_T, const T* w_h, T* d_hp, T* d_a_n, T* d_h0, int64_t n, int64_t B, int64_t H,
                 bool reverse, bool batch_major) {
  constexpr int L = 32 / sizeof(T);
  const int64_t G = 3 * H;
  const Layout lay{n, B, batch_major};
  return ReverseLoop<T>(
      pool, w_h, d_h_T, d_hp, d_h0, lay, H, G, reverse, true,
      [&](int64_t s, int64_t t, int64_t tp, int64_t b, int64_t j0, int64_t width, T* dhb) {
        const T* gt = rzn + lay.Row(t, b, G) + j0;
        const T* hn = hp_n + lay.Row(t, b, H) + j0;
        const T* hp = (s == n - 1 ? h_first + b * H : hs + lay.Row(tp, b, H)) + j0;
        const T* dy = d_ys + lay.Row(t, b, H) + j0;
        T* dg = d_hp + lay.Row(t, b, G) + j0;
        T* dn = d_a_n + lay.Row(t, b, H) + j0;
        for (int64_t l = 0; l < width; l += L) {
          const Vec<T> r = Load(gt + l), z = Load(gt + H + l), c = Load(gt + 2 * H + l), h_n = Load(hn + l);
          const Vec<T> d_h = Load(dhb + l) + Load(dy + l);  // y_t = h_t: the output's cotangent joins
          const Vec<T> d_an = d_h * (T(1) - z) * (T(1) - c * c);             // h = (1 - z) n + ..., n = tanh(a_n)
          const Vec<T> d_az = d_h * (Load(hp + l) - c) * (z * (T(1) - z));  // h = ... + z h_{t-1}, z = σ(a_z)
          const Vec<T> d_ar = d_an * h_n * (r * (T(1) - r));                 // a_n = x_n + r hp_n, r = σ(a_r)
          Store(dg + l, d_ar);
          Store(dg + H + l, d_az);
          Store(dg + 2 * H + l, d_an * r);
          Store(dn + l, d_an);
          Store(dhb + l, d_h * z);  // h = ... + z h_{t-1}; the product adds the rest
        }
      });
}

}  // namespace

// -- the FFI handlers ----------------------------------------------------------------------------

// (n, B, H) of a sequence (n, B, gates·H) or (B, n, gates·H), after checking its dtype and hidden size
struct Dims {
  int64_t n, B, H;
};

static ffi::Error SequenceDims(const ffi::AnyBuffer& seq, int gates, bool batch_major, Dims* d) {
  const auto type = seq.element_type();
  if (type != ffi::DataType::F32 && type != ffi::DataType::F64)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jrnn native loops: float32 or float64 only");
  const auto dims = seq.dimensions();
  if (dims.size() != 3 || dims[2] % gates != 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jrnn native loops: a sequence must be (n, B, gates x H)");
  *d = {batch_major ? dims[1] : dims[0], batch_major ? dims[0] : dims[1], dims[2] / gates};
  const int64_t L = type == ffi::DataType::F32 ? 8 : 4;
  if (d->H % (2 * L) != 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jrnn native loops: hidden size not a multiple of 2L");
  return ffi::Error::Success();
}

template <class T>
const T* In(const ffi::AnyBuffer& buffer) {
  return static_cast<const T*>(buffer.untyped_data());
}

template <class T>
T* Out(ffi::Result<ffi::AnyBuffer>& result) {
  return static_cast<T*>(result->untyped_data());
}

// Runs loop(T{}) with T the element type of `like` (checked: float or double); its result (false:
// the packed weights found no memory) as the handler's.
template <class F>
ffi::Error ByType(const ffi::AnyBuffer& like, F loop) {
  const bool done = like.element_type() == ffi::DataType::F32 ? loop(float{}) : loop(double{});
  if (done) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kResourceExhausted, "jrnn native loops: no memory for the packed weights");
}

// The outputs a forward loop writes first: advised onto huge pages (AdviseHugePages).
template <class... R>
void AdviseOutputs(R&... out) {
  (AdviseHugePages(out->untyped_data(), out->size_bytes()), ...);
}

static ffi::Error LstmForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer xw, ffi::AnyBuffer bias, ffi::AnyBuffer w_h,
                                  ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::Result<ffi::AnyBuffer> gates,
                                  ffi::Result<ffi::AnyBuffer> hs, ffi::Result<ffi::AnyBuffer> cs,
                                  ffi::Result<ffi::AnyBuffer> h_T, ffi::Result<ffi::AnyBuffer> c_T, bool reverse,
                                  bool batch_major) {
  Dims d;
  if (ffi::Error e = SequenceDims(xw, 4, batch_major, &d); e.failure()) return e;
  AdviseOutputs(gates, hs, cs);
  return ByType(xw, [&](auto zero) {
    using T = decltype(zero);
    return Forward<T>(pool, In<T>(xw), In<T>(bias), In<T>(w_h), In<T>(h0), In<T>(c0), Out<T>(gates), Out<T>(hs),
                      Out<T>(cs), Out<T>(h_T), Out<T>(c_T), d.n, d.B, d.H, reverse, batch_major);
  });
}

static ffi::Error LstmBackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer gates, ffi::AnyBuffer cs,
                                   ffi::AnyBuffer c_first, ffi::AnyBuffer d_ys, ffi::AnyBuffer d_h_T,
                                   ffi::AnyBuffer d_c_T, ffi::AnyBuffer w_h, ffi::Result<ffi::AnyBuffer> d_a,
                                   ffi::Result<ffi::AnyBuffer> d_h0, ffi::Result<ffi::AnyBuffer> d_c0, bool reverse,
                                   bool batch_major) {
  Dims d;
  if (ffi::Error e = SequenceDims(gates, 4, batch_major, &d); e.failure()) return e;
  return ByType(gates, [&](auto zero) {
    using T = decltype(zero);
    return Backward<T>(pool, In<T>(gates), In<T>(cs), In<T>(c_first), In<T>(d_ys), In<T>(d_h_T), In<T>(d_c_T),
                       In<T>(w_h), Out<T>(d_a), Out<T>(d_h0), Out<T>(d_c0), d.n, d.B, d.H, reverse, batch_major);
  });
}

static ffi::Error GruForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer xw, ffi::AnyBuffer b_x, ffi::AnyBuffer b_h,
                                 ffi::AnyBuffer w_h, ffi::AnyBuffer h0, ffi::Result<ffi::AnyBuffer> rzn,
                                 ffi::Result<ffi::AnyBuffer> hp_n, ffi::Result<ffi::AnyBuffer> hs,
                                 ffi::Result<ffi::AnyBuffer> h_T, bool reverse, bool batch_major) {
  Dims d;
  if (ffi::Error e = SequenceDims(xw, 3, batch_major, &d); e.failure()) return e;
  AdviseOutputs(rzn, hp_n, hs);
  return ByType(xw, [&](auto zero) {
    using T = decltype(zero);
    return GruForward<T>(pool, In<T>(xw), In<T>(b_x), In<T>(b_h), In<T>(w_h), In<T>(h0), Out<T>(rzn), Out<T>(hp_n),
                         Out<T>(hs), Out<T>(h_T), d.n, d.B, d.H, reverse, batch_major);
  });
}

static ffi::Error GruBackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer rzn, ffi::AnyBuffer hp_n, ffi::AnyBuffer hs,
                                  ffi::AnyBuffer h_first, ffi::AnyBuffer d_ys, ffi::AnyBuffer d_h_T,
                                  ffi::AnyBuffer w_h, ffi::Result<ffi::AnyBuffer> d_hp,
                                  ffi::Result<ffi::AnyBuffer> d_a_n, ffi::Result<ffi::AnyBuffer> d_h0, bool reverse,
                                  bool batch_major) {
  Dims d;
  if (ffi::Error e = SequenceDims(rzn, 3, batch_major, &d); e.failure()) return e;
  return ByType(rzn, [&](auto zero) {
    using T = decltype(zero);
    return GruBackward<T>(pool, In<T>(rzn), In<T>(hp_n), In<T>(hs), In<T>(h_first), In<T>(d_ys), In<T>(d_h_T),
                          In<T>(w_h), Out<T>(d_hp), Out<T>(d_a_n), Out<T>(d_h0), d.n, d.B, d.H, reverse, batch_major);
  });
}

extern "C" {

// 1 if this CPU runs the instructions the library was built for (AVX2 and FMA), else 0: checked
// before the first call, so that a library built elsewhere never executes an unknown instruction.
int JrnnCpuSupported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnLstmForward, LstmForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()  // XLA's intra-op threads
                                  .Arg<ffi::AnyBuffer>()  // xw: the input projection, no bias
                                  .Arg<ffi::AnyBuffer>()  // b (4H,)
                                  .Arg<ffi::AnyBuffer>()  // w_h (H, 4H)
                                  .Arg<ffi::AnyBuffer>()  // h0 (B, H)
                                  .Arg<ffi::AnyBuffer>()  // c0 (B, H)
                                  .Ret<ffi::AnyBuffer>()  // gates, over xw
                                  .Ret<ffi::AnyBuffer>()  // h after each step
                                  .Ret<ffi::AnyBuffer>()  // c after each step
                                  .Ret<ffi::AnyBuffer>()  // h_T
                                  .Ret<ffi::AnyBuffer>()  // c_T
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnLstmBackward, LstmBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()  // XLA's intra-op threads
                                  .Arg<ffi::AnyBuffer>()  // gates
                                  .Arg<ffi::AnyBuffer>()  // c after each step
                                  .Arg<ffi::AnyBuffer>()  // c entering the first step
                                  .Arg<ffi::AnyBuffer>()  // d_ys
                                  .Arg<ffi::AnyBuffer>()  // d_h_T
                                  .Arg<ffi::AnyBuffer>()  // d_c_T
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Ret<ffi::AnyBuffer>()  // d_a, over the gates
                                  .Ret<ffi::AnyBuffer>()  // d_h0
                                  .Ret<ffi::AnyBuffer>()  // d_c0
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnGruForward, GruForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()  // XLA's intra-op threads
                                  .Arg<ffi::AnyBuffer>()  // xw: the input projection, no bias
                                  .Arg<ffi::AnyBuffer>()  // b_x (3H,)
                                  .Arg<ffi::AnyBuffer>()  // b_h (3H,)
                                  .Arg<ffi::AnyBuffer>()  // w_h (H, 3H)
                                  .Arg<ffi::AnyBuffer>()  // h0 (B, H)
                                  .Ret<ffi::AnyBuffer>()  // [r z n]
                                  .Ret<ffi::AnyBuffer>()  // hp_n
                                  .Ret<ffi::AnyBuffer>()  // h after each step
                                  .Ret<ffi::AnyBuffer>()  // h_T
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JrnnGruBackward, GruBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()  // XLA's intra-op threads
                                  .Arg<ffi::AnyBuffer>()  // [r z n]
                                  .Arg<ffi::AnyBuffer>()  // hp_n
                                  .Arg<ffi::AnyBuffer>()  // h after each step
                                  .Arg<ffi::AnyBuffer>()  // h entering the first step
                                  .Arg<ffi::AnyBuffer>()  // d_ys
                                  .Arg<ffi::AnyBuffer>()  // d_h_T
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Ret<ffi::AnyBuffer>()  // d_hp, over [r z n]
                                  .Ret<ffi::AnyBuffer>()  // d_a_n, over hp_n
                                  .Ret<ffi::AnyBuffer>()  // d_h0
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("batch_major"));

}  // extern "C"
