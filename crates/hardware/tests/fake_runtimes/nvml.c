/* A stand-in for libnvidia-ml.so.1 with the nvml.h ABI the CUDA probe uses:
 * two devices, the second of which cannot report memory (as on some MIG or
 * unified-memory setups). Built by tests/ffi_fake_runtimes.rs. */
#include <string.h>

typedef void *nvmlDevice_t;
typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

enum { NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
       NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_INSUFFICIENT_SIZE = 7 };

static int initialised = 0;
static int devices[2];

int nvmlInit_v2(void) { initialised++; return NVML_SUCCESS; }
int nvmlShutdown(void) { initialised--; return NVML_SUCCESS; }

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    *count = 2;
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (index > 1) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &devices[index];
    return NVML_SUCCESS;
}

static int copy_out(const char *text, char *buffer, unsigned int length) {
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buffer, text);
    return NVML_SUCCESS;
}

int nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    return copy_out(device == &devices[0] ? "NVIDIA H100 80GB HBM3" : "NVIDIA L4", name, length);
}

int nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    return copy_out(device == &devices[0] ? "GPU-11111111-2222-3333-4444-555555555555"
                                          : "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                    uuid, length);
}

int nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (device != &devices[0]) return NVML_ERROR_NOT_SUPPORTED;
    memory->total = 85520809984ULL;
    memory->free = 84934656000ULL;
    memory->used = memory->total - memory->free;
    return NVML_SUCCESS;
}

int nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    *major = device == &devices[0] ? 9 : 8;
    *minor = device == &devices[0] ? 0 : 9;
    return NVML_SUCCESS;
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    return copy_out("550.54.15", version, length);
}

const char *nvmlErrorString(int result) {
    return result == NVML_ERROR_NOT_SUPPORTED ? "Not Supported" : "Unknown Error";
}
