/* A stand-in for libopenvino_c.so with the openvino/c API the OpenVINO probe
 * uses: three devices, full names, GPU memory, version. Built by
 * tests/ffi_fake_runtimes.rs. */
#include <stdlib.h>
#include <string.h>

typedef struct { char **devices; size_t size; } ov_available_devices_t;
typedef struct { const char *buildNumber; const char *description; } ov_version_t;
enum { OK = 0, GENERAL_ERROR = -1, NOT_FOUND = -5 };

static int core_object;
static int live_cores = 0;

int ov_core_create(void **core) { live_cores++; *core = &core_object; return OK; }
void ov_core_free(void *core) { (void)core; live_cores--; }

int ov_core_get_available_devices(const void *core, ov_available_devices_t *devices) {
    if (core != &core_object) return GENERAL_ERROR;
    devices->size = 3;
    devices->devices = malloc(3 * sizeof(char *));
    devices->devices[0] = strdup("CPU");
    devices->devices[1] = strdup("GPU.0");
    devices->devices[2] = strdup("NPU");
    return OK;
}

void ov_available_devices_free(ov_available_devices_t *devices) {
    for (size_t i = 0; i < devices->size; i++) free(devices->devices[i]);
    free(devices->devices);
    devices->devices = NULL;
    devices->size = 0;
}

int ov_core_get_property(const void *core, const char *device, const char *key, char **value) {
    (void)core;
    if (!strcmp(key, "FULL_DEVICE_NAME")) {
        *value = strdup(!strcmp(device, "CPU")   ? "Intel(R) Core(TM) Ultra 7 155H"
                        : !strcmp(device, "NPU") ? "Intel(R) AI Boost"
                                                 : "Intel(R) Arc(TM) Graphics (iGPU)");
        return OK;
    }
    if (!strcmp(key, "GPU_DEVICE_TOTAL_MEM_SIZE") && !strcmp(device, "GPU.0")) {
        *value = strdup("16722853888");
        return OK;
    }
    return NOT_FOUND;
}

void ov_free(const char *text) { free((void *)text); }

int ov_get_openvino_version(ov_version_t *version) {
    version->buildNumber = strdup("2024.4.0-16579-c3152d32c9c-releases/2024/4");
    version->description = strdup("OpenVINO Runtime");
    return OK;
}

void ov_version_free(ov_version_t *version) {
    free((void *)version->buildNumber);
    free((void *)version->description);
}
