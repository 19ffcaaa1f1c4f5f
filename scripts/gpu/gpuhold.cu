// Holds MiB of device memory with a known pattern for SECS seconds; with "busy" it keeps
// launching kernels over it (so the GPU shows utilization), else it idles. Prints HOLDING once
// the memory is allocated and filled. Used by the accounting check.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unistd.h>
#include <cuda_runtime.h>

__global__ void fill(unsigned *p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (unsigned)i ^ seed;
}

__global__ void spin(unsigned *p, size_t n, int rounds) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned v = p[i];
        for (int r = 0; r < rounds; r++) v = v * 1664525u + 1013904223u;
        p[i] = v;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: gpuhold MiB SECS [busy]\n"); return 2; }
    size_t mib = strtoul(argv[1], 0, 10);
    int secs = atoi(argv[2]);
    bool busy = argc > 3 && !strcmp(argv[3], "busy");
    size_t bytes = mib << 20, n = bytes / sizeof(unsigned);
    unsigned *p = 0;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) { printf("HOLD FAIL: %s\n", cudaGetErrorString(e)); return 1; }
    fill<<<1024, 256>>>(p, n, 7u);
    cudaDeviceSynchronize();
    printf("HOLDING %zu MiB\n", mib);
    fflush(stdout);
    time_t end = time(0) + secs;
    while (time(0) < end) {
        if (busy) { spin<<<1024, 256>>>(p, n, 256); cudaDeviceSynchronize(); }
        else sleep(1);
    }
    cudaFree(p);
    return 0;
}
