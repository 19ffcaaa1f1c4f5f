// Adds two vectors on GPU 0 and checks every element on the host.
#include <cstdio>
#include <cstdlib>

__global__ void add(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

int main() {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        printf("CUDA FAIL: %s (devices: %d)\n", cudaGetErrorString(e), count);
        return 1;
    }
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    const int n = 1 << 20;
    size_t bytes = n * sizeof(float);
    float *ha = (float *)malloc(bytes), *hb = (float *)malloc(bytes), *hc = (float *)malloc(bytes);
    for (int i = 0; i < n; i++) { ha[i] = i; hb[i] = 2.0f * i; }
    float *a, *b, *c;
    cudaMalloc(&a, bytes); cudaMalloc(&b, bytes); cudaMalloc(&c, bytes);
    cudaMemcpy(a, ha, bytes, cudaMemcpyHostToDevice);
    cudaMemcpy(b, hb, bytes, cudaMemcpyHostToDevice);
    add<<<(n + 255) / 256, 256>>>(a, b, c, n);
    e = cudaMemcpy(hc, c, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) { printf("CUDA FAIL: %s\n", cudaGetErrorString(e)); return 1; }
    for (int i = 0; i < n; i++) {
        if (hc[i] != 3.0f * i) { printf("CUDA FAIL: c[%d] = %f\n", i, hc[i]); return 1; }
    }
    printf("CUDA PASS: %d device(s), %s, kernel verified on %d elements\n", count, p.name, n);
    return 0;
}
