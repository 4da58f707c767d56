/* A stand-in for libQnnHtp.so: QnnInterface_getProviders with the leading
 * QnnInterface_t fields of QnnInterface.h (the function table after them is
 * never read by the probe). Built by tests/ffi_fake_runtimes.rs. */
#include <stdint.h>

typedef struct { uint32_t major, minor, patch; } Qnn_Version_t;
typedef struct { Qnn_Version_t coreApiVersion; Qnn_Version_t backendApiVersion; } Qnn_ApiVersion_t;
typedef struct {
    uint32_t backendId;
    const char *providerName;
    Qnn_ApiVersion_t apiVersion;
    void *functions[64];
} QnnInterface_t;

static const QnnInterface_t htp = { 6, "HTP_QTI_AISW", { { 2, 20, 0 }, { 5, 26, 0 } }, { 0 } };
static const QnnInterface_t *providers[1] = { &htp };

uint64_t QnnInterface_getProviders(const QnnInterface_t ***provider_list, uint32_t *count) {
    *provider_list = providers;
    *count = 1;
    return 0;
}
