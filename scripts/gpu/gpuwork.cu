// Holds MiB of device memory with a known pattern and keeps computing over it (a checksum
// kernel, again and again) for SECS seconds; then copies it back and checks every word, and
// that every checksum agreed. Prints HOLDING when the memory is filled, and at the end
// VERIFY PASS or VERIFY FAIL. Used by the GPU-aware pause check.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>
#include <cuda_runtime.h>

__global__ void fill(unsigned *p, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (unsigned)(i * 2654435761u);
}

__global__ void checksum(const unsigned *p, size_t n, unsigned long long *acc) {
    unsigned long long s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += p[i];
    atomicAdd(acc, s);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: gpuwork MiB SECS\n"); return 2; }
    size_t bytes = strtoul(argv[1], 0, 10) << 20, n = bytes / sizeof(unsigned);
    int secs = atoi(argv[2]);
    unsigned *p = 0;
    unsigned long long *acc = 0;
    if (cudaMalloc(&p, bytes) != cudaSuccess || cudaMalloc(&acc, sizeof *acc) != cudaSuccess) {
        printf("VERIFY FAIL: allocation\n"); return 1;
    }
    fill<<<2048, 256>>>(p, n);
    cudaDeviceSynchronize();
    printf("HOLDING %zu MiB\n", bytes >> 20);
    fflush(stdout);
    unsigned long long first = 0, s = 0;
    long rounds = 0, bad = 0;
    time_t end = time(0) + secs;
    while (time(0) < end) {
        cudaMemset(acc, 0, sizeof *acc);
        checksum<<<2048, 256>>>(p, n, acc);
        if (cudaMemcpy(&s, acc, sizeof s, cudaMemcpyDeviceToHost) != cudaSuccess) { bad++; break; }
        if (rounds == 0) first = s; else if (s != first) bad++;
        rounds++;
    }
    std::vector<unsigned> host(n);
    if (cudaMemcpy(host.data(), p, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) { printf("VERIFY FAIL: copy back\n"); return 1; }
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++) if (host[i] != (unsigned)(i * 2654435761u)) wrong++;
    if (wrong == 0 && bad == 0 && rounds > 0) printf("VERIFY PASS: %ld checksum rounds agreed, %zu words intact\n", rounds, n);
    else printf("VERIFY FAIL: %zu words wrong, %ld of %ld rounds disagreed\n", wrong, bad, rounds);
    return wrong || bad;
}
