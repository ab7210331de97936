"""CUDA snippets both CUDA generators share: load/store flavours, PTX helpers, and the launcher boilerplate.

The helpers are emitted into a candidate only when its features use them, so a candidate's source stays the
kernel a reader (or a language model seeing it as a seed) would write by hand.
"""

from __future__ import annotations

# Largest dynamic shared memory a generated kernel asks for: H100 allows 227 KiB per block; the static
# reduction scratch (at most ~24 KiB) must fit beside it.
SMEM_CACHE_MAX = 200 * 1024

THREADS = (128, 256, 512, 1024)


def load(kind: str, ptr: str) -> str:
    """A global load of ``*ptr`` (float or float4) with the requested cache behaviour."""
    if kind == "ldg":
        return f"__ldg({ptr})"
    if kind == "ldcs":
        return f"__ldcs({ptr})"
    if kind == "noalloc":
        return f"ld_noalloc({ptr})"
    return f"*({ptr})"


def store(kind: str, ptr: str, value: str) -> str:
    if kind == "stcs":
        return f"__stcs({ptr}, {value});"
    return f"*({ptr}) = {value};"


KEEP_HELPERS = r"""
// Read-only loads under an L2 evict-last policy: a parameter read again for every row keeps its lines in L2 while
// the rows stream past it (plain asm, not volatile: the compiler may still schedule these loads early).
__device__ __forceinline__ float ld_keep(const float* p) {
  float v;
  asm("{ .reg .b64 pol; createpolicy.fractional.L2::evict_last.b64 pol, 1.0;\n"
      "  ld.global.nc.L2::cache_hint.f32 %0, [%1], pol; }" : "=f"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ float4 ld_keep(const float4* p) {
  float4 v;
  asm("{ .reg .b64 pol; createpolicy.fractional.L2::evict_last.b64 pol, 1.0;\n"
      "  ld.global.nc.L2::cache_hint.v4.f32 {%0, %1, %2, %3}, [%4], pol; }"
      : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
  return v;
}
"""

NOALLOC_HELPERS = r"""
// Read-only loads that bypass L1 allocation: streamed data is never reused, so keep L1 for others.
__device__ __forceinline__ float ld_noalloc(const float* p) {
  float v;
  asm volatile("ld.global.nc.L1::no_allocate.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ float2 ld_noalloc(const float2* p) {
  float2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ float4 ld_noalloc(const float4* p) {
  float4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
  return v;
}
"""

PREFETCH_L2 = r"""
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" :: "l"(p));
}
"""

CP_ASYNC = r"""
// 16-byte asynchronous global->shared copy (sm_80+): the data skips registers and the SM keeps issuing.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
}
"""

# Pipelined copies for tiled kernels: zero-filling past the edges, one commit group per stage, wait for all but N.
CP_ASYNC_PIPELINE = r"""
// 16-byte asynchronous global -> shared copy (sm_80+); a source size of 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(s), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}
"""

CLUSTER = r"""
// Thread-block cluster helpers (sm_90): rank in the cluster, a cluster-wide barrier, and loads from a
// neighbour block's shared memory (distributed shared memory).
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ float dsmem_load(const float* p, unsigned rank) {
  unsigned a = (unsigned)__cvta_generic_to_shared(p), r;
  float v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(r) : "memory");
  return v;
}
__device__ __forceinline__ double dsmem_load(const double* p, unsigned rank) {
  unsigned a = (unsigned)__cvta_generic_to_shared(p), r;
  double v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  asm volatile("ld.shared::cluster.f64 %0, [%1];" : "=d"(v) : "r"(r) : "memory");
  return v;
}
"""

LD_ACQUIRE = r"""
// A load that orders every later read of this thread after it: the read of a counter that other blocks' writes
// were published before (their __threadfence() and atomicAdd), at GPU scope.
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
"""

GRID_BARRIER = LD_ACQUIRE + r"""
// A grid-wide barrier for a cooperative launch (every block resident): each block's thread 0 publishes the
// block's writes, counts itself in, and waits until all blocks of this and every earlier barrier have arrived
// (the counter only grows, so no reset can race with a late reader).
__device__ __forceinline__ void grid_barrier(unsigned* bar, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(bar, 1u);
    while (ld_acquire(bar) < target) {}
  }
  __syncthreads();
}
"""

PIPE_HELPERS = LD_ACQUIRE + r"""
// Warp-specialised roles of one block meet at named barriers (ids 1-15; 0 is __syncthreads): bar.sync waits for
// the count, bar.arrive counts itself in without waiting, so a producing role never stalls on its consumers.
__device__ __forceinline__ void bar_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(n) : "memory");
}
"""

SM_COUNT_PY = '''

@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    """Multiprocessors of the GPU: grids are sized to fill every SM, not to a fixed number of blocks."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count
'''


def options(fast_math: bool) -> str:
    return '("--use_fast_math",)' if fast_math else "()"


# D += A(16x16, row) * B(16x8, col) in one 16-bit tensor-core instruction, float32 accumulate: the template of the
# matmul kernels' bfloat16 and float16 products (HALF -> bf16 or f16).
MMA_HALF = r"""__device__ __forceinline__ void mma_HALF(float* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.HALF.HALF.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
               "{%8, %9}, {%0, %1, %2, %3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
"""

# The float16 products' operand scale, from the absmax pass's bits (the in-loop and the split-once f16 kernels).
POW2_SCALE = r"""
// 2^(14 - floor(log2 m)) for the bits of m = max |x|: m times it lies in [2^14, 2^15), under float16's 65504. A zero
// or tiny m takes 2^127, an infinite or NaN one 1 (the result is not finite either way).
__device__ __forceinline__ float pow2_scale(unsigned bits) {
  const int e = (int)((bits >> 23) & 0xffu);
  if (e == 255) return 1.f;
  return __uint_as_float((unsigned)(268 - max(e, 14)) << 23);
}
"""
