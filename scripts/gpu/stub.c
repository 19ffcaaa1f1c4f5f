/* A stale CUDA driver stub: every entry point fails. */
int cuInit(unsigned int flags) { (void)flags; return 999; }
int cuDriverGetVersion(int *v) { *v = 0; return 999; }
int cuGetProcAddress(const char *s, void **p, int v, unsigned long long f) { (void)s; (void)v; (void)f; *p = 0; return 999; }
