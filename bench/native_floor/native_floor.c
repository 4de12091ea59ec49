/* native_floor: what a native (no Python) LLM runner holds in memory.
 *
 * A measurement spike for issue 16 (peak RSS <= 1.3x weights + KV cache), not a product
 * runner: it runs an edgeport cpu LLM program's one-graph model through LiteRT's C API
 * (libLiteRt.so of the ai-edge-litert 2.3.0 wheel) the way edgeport's Python session
 * does (core/llm/session.py, backends/tflite/compiled.py, litert_c.py), with nothing
 * else in the process, and prints its resident memory at each stage.
 *
 *   native_floor SPEC CACHE_FILE [NEW_TOKENS [PAGES_OUT]]
 *
 * SPEC (written by spec.py) names the program file and where its .tflite entry lies in
 * it, the prompt ids, and the role of every input and output in signature order. The
 * program file is mapped read-only and the model read in place from the map (as the
 * session's mapped_file does); it is compiled on CPU (XNNPACK), 1 thread, with
 * XNNPACK's weight cache file CACHE_FILE: when the file does not exist it is built under
 * CACHE_FILE.building, the model that built it is destroyed, the file renamed and the
 * model compiled again from it (compiled.py's order); the model's pages are then let go
 * (MADV_DONTNEED, mapped_file.release). Every input and output is a full-rank host
 * buffer; the KV cache inputs are bound once and read in place, and the rows each call
 * outputs are written into them at the call's positions (the plan's row updates). It
 * prefills the prompt in one call, then decodes greedily (argmax over the logits, the
 * token fed back) until NEW_TOKENS tokens are generated, and prints their ids.
 * No tokenizer: ids in, ids out.
 *
 * Memory is printed before the model loads, after it compiled, after prefill and at the
 * end: VmHWM and VmRSS (/proc/self/status), anonymous and file-backed resident pages
 * (/proc/self/smaps_rollup), and the resident pages of the program file's mapping, the
 * weight cache file's mapping and libLiteRt.so apart (/proc/self/smaps). With PAGES_OUT,
 * the model's pages resident in this process at the end (page indices from the model's
 * first byte, from /proc/self/pagemap) are written there, one per line. With the
 * environment variable NATIVE_FLOOR_RANDOM=1 the model's mapping is advised MADV_RANDOM
 * before compiling; with NATIVE_FLOOR_RELEASE=1 its pages are let go after every decode
 * call (MADV_DONTNEED); with NATIVE_FLOOR_DROP=1 the model's range of the file is
 * dropped from the page cache (POSIX_FADV_DONTNEED) before and after compiling, and
 * the mapping advised MADV_RANDOM.
 *
 * No LiteRT header ships in the wheel: the few structs and calls used are declared here,
 * matched to LiteRT 2.3's C headers (each declaration names its header).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- LiteRT 2.3 C API ------------------------------------------------------------- */

#define LITERT_TENSOR_MAX_RANK 8 /* litert/c/litert_layout.h */
typedef struct {                 /* litert/c/litert_layout.h: LiteRtLayout, 68 bytes */
  unsigned int rank : 7;
  unsigned int has_strides : 1;
  int32_t dimensions[LITERT_TENSOR_MAX_RANK];
  uint32_t strides[LITERT_TENSOR_MAX_RANK];
} LiteRtLayout;
typedef struct { /* litert/c/litert_model_types.h: LiteRtRankedTensorType, 72 bytes */
  int element_type; /* LiteRtElementType, = TfLiteType */
  LiteRtLayout layout;
} LiteRtRankedTensorType;
_Static_assert(sizeof(LiteRtLayout) == 68, "LiteRtLayout is 68 bytes in LiteRT 2.3");
_Static_assert(offsetof(LiteRtLayout, strides) == 36, "strides at 36");
_Static_assert(sizeof(LiteRtRankedTensorType) == 72, "LiteRtRankedTensorType is 72 bytes");

typedef void *Handle; /* every LiteRt* handle is an opaque pointer (LITERT_DEFINE_HANDLE) */
enum { kFloat32 = 1, kInt32 = 2, kInt64 = 4, kInt8 = 9 }; /* litert/c/litert_model_types.h */
enum { kLiteRtHwAcceleratorCpu = 1 };                       /* litert/c/litert_common.h */

/* litert/c/litert_environment.h */
int LiteRtCreateEnvironment(int num_options, const void *options, Handle *environment);
void LiteRtDestroyEnvironment(Handle environment);
/* litert/c/litert_model.h */
int LiteRtCreateModelFromBuffer(Handle environment, const void *buffer, size_t size, Handle *model);
void LiteRtDestroyModel(Handle model);
int LiteRtGetModelSignature(Handle model, size_t index, Handle *signature);
int LiteRtGetNumSignatureInputs(Handle signature, size_t *count);
int LiteRtGetNumSignatureOutputs(Handle signature, size_t *count);
int LiteRtGetSignatureInputName(Handle signature, size_t index, const char **name);
int LiteRtGetSignatureOutputName(Handle signature, size_t index, const char **name);
int LiteRtGetSignatureInputTensorByIndex(Handle signature, size_t index, Handle *tensor);
int LiteRtGetRankedTensorType(Handle tensor, LiteRtRankedTensorType *type);
/* litert/c/litert_options.h */
int LiteRtCreateOptions(Handle *options);
void LiteRtDestroyOptions(Handle options);
int LiteRtSetOptionsHardwareAccelerators(Handle options, int accelerators);
int LiteRtAddOpaqueOptions(Handle options, Handle opaque_options);
/* litert/c/litert_opaque_options.h (the CPU options' payload is TOML text under the
 * identifier "xnnpack": litert/c/options/litert_cpu_options.cc) */
int LiteRtCreateOpaqueOptions(const char *identifier, void *payload, void (*payload_destructor)(void *),
                              Handle *options);
/* litert/c/litert_compiled_model.h */
int LiteRtCreateCompiledModel(Handle environment, Handle model, Handle options, Handle *compiled_model);
void LiteRtDestroyCompiledModel(Handle compiled_model);
int LiteRtCompiledModelResizeInputTensor(Handle compiled_model, size_t signature_index, size_t input_index,
                                         const int *dims, size_t dims_size);
int LiteRtGetCompiledModelOutputTensorLayouts(Handle compiled_model, size_t signature_index,
                                              size_t num_layouts, LiteRtLayout *layouts,
                                              bool update_allocation);
int LiteRtRunCompiledModel(Handle compiled_model, size_t signature_index, size_t num_inputs,
                           Handle *inputs, size_t num_outputs, Handle *outputs);
/* litert/c/litert_tensor_buffer.h */
int LiteRtCreateTensorBufferFromHostMemory(const LiteRtRankedTensorType *type, void *host_memory,
                                           size_t size, void (*deallocator)(void *), Handle *buffer);
void LiteRtDestroyTensorBuffer(Handle buffer);

/* ---- helpers ---------------------------------------------------------------------- */

#define MAX_IO 256
#define MIB (1024.0 * 1024.0)

static void check(int status, const char *what) {
  if (status != 0) {
    fprintf(stderr, "native_floor: %s failed with LiteRT status %d\n", what, status);
    exit(1);
  }
}

static void die(const char *message, const char *detail) {
  fprintf(stderr, "native_floor: %s%s\n", message, detail ? detail : "");
  exit(1);
}

static void keep_payload(void *payload) { (void)payload; /* a static string: nothing to free */ }

static size_t element_size(int type) {
  switch (type) {
    case kFloat32: case kInt32: return 4;
    case kInt64: return 8;
    case kInt8: return 1;
    default: die("unexpected element type", NULL); return 0;
  }
}

static size_t count_of(const LiteRtLayout *layout) {
  size_t n = 1;
  for (unsigned i = 0; i < layout->rank; i++) n *= (size_t)layout->dimensions[i];
  return n;
}

/* A zeroed 64-byte aligned block with 64 bytes after it (XNNPACK may read past a
 * tensor's end): what litert_c.aligned_empty gives. */
static void *aligned_zeros(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes + 64) != 0) die("out of memory", NULL);
  memset(p, 0, bytes + 64);
  return p;
}

/* ---- memory reports --------------------------------------------------------------- */

static const char *program_path, *cache_path;

static long status_kib(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long value = -1;
  size_t n = strlen(key);
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, key, n) && line[n] == ':') value = atol(line + n + 1);
  if (f) fclose(f);
  return value;
}

static long rollup_kib(const char *key) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  char line[256];
  long value = -1;
  size_t n = strlen(key);
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, key, n) && line[n] == ':') value = atol(line + n + 1);
  if (f) fclose(f);
  return value;
}

/* Resident KiB of the mappings whose header line (their path) contains ``needle``. */
static long mapping_rss_kib(const char *needle) {
  FILE *f = fopen("/proc/self/smaps", "r");
  char line[4096];
  long total = 0;
  bool in = false;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long a, b; /* a mapping's header line: "start-end perms offset dev inode path" */
    if (sscanf(line, "%lx-%lx ", &a, &b) == 2) in = strstr(line, needle) != NULL;
    if (in && !strncmp(line, "Rss:", 4)) total += atol(line + 4);
  }
  if (f) fclose(f);
  return total;
}

static void report(const char *stage) {
  long rss = rollup_kib("Rss"), anon = rollup_kib("Anonymous"), shmem = rollup_kib("Pss_Shmem");
  printf("memory %-10s VmHWM %7.1f  VmRSS %7.1f  anon %7.1f  file %7.1f  | program-file map %7.1f  "
         "weight-cache map %7.1f  libLiteRt %5.1f  (MiB)\n",
         stage, status_kib("VmHWM") / 1024.0, status_kib("VmRSS") / 1024.0, anon / 1024.0,
         (rss - anon - (shmem > 0 ? shmem : 0)) / 1024.0, mapping_rss_kib(program_path) / 1024.0,
         mapping_rss_kib(cache_path) / 1024.0, mapping_rss_kib("libLiteRt.so") / 1024.0);
  fflush(stdout);
}

/* Page indices (from ``start``) of [start, start + bytes) resident in this process. */
static void write_resident_pages(const char *out, const uint8_t *start, size_t bytes) {
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t first = (uintptr_t)start / page, last = ((uintptr_t)start + bytes - 1) / page;
  int fd = open("/proc/self/pagemap", O_RDONLY);
  FILE *f = fopen(out, "w");
  if (fd < 0 || !f) die("cannot write resident pages to ", out);
  size_t resident = 0;
  for (uintptr_t p = first; p <= last; p++) {
    uint64_t entry = 0;
    if (pread(fd, &entry, sizeof entry, (off_t)(p * sizeof entry)) != sizeof entry) break;
    if (entry >> 63 & 1) {
      fprintf(f, "%lu\n", (unsigned long)(p - first));
      resident++;
    }
  }
  fclose(f);
  close(fd);
  printf("model pages resident at the end: %zu of %lu (%.1f MiB), listed in %s\n", resident,
         (unsigned long)(last - first + 1), resident * page / MIB, out);
}

/* ---- the spec --------------------------------------------------------------------- */

enum Role { TOKENS, POSITIONS, WINDOW, STATE, LOGITS, ROWS };
typedef struct {
  char name[128];
  enum Role role;
  int target, dim; /* ROWS: the state input they are written into, along dim */
} Io;
typedef struct {
  char program[1024];
  size_t offset, length;
  int64_t prompt[64];
  int prompt_len;
  Io in[MAX_IO], out[MAX_IO];
  int n_in, n_out;
} Spec;

static void read_spec(const char *path, Spec *s) {
  FILE *f = fopen(path, "r");
  char line[2048], name[128], role[32];
  if (!f) die("cannot open spec ", path);
  memset(s, 0, sizeof *s);
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, "model ", 6)) {
      if (sscanf(line + 6, "%1023s %zu %zu", s->program, &s->offset, &s->length) != 3) die("bad model line", NULL);
    } else if (!strncmp(line, "prompt ", 7)) {
      char *p = line + 7, *end;
      for (long v = strtol(p, &end, 10); end != p && s->prompt_len < 64; v = strtol(p, &end, 10)) {
        s->prompt[s->prompt_len++] = v;
        p = end;
      }
    } else if (sscanf(line, "in %127s %31s", name, role) == 2) {
      Io *io = &s->in[s->n_in++];
      snprintf(io->name, sizeof io->name, "%s", name);
      io->role = !strcmp(role, "tokens") ? TOKENS : !strcmp(role, "positions") ? POSITIONS
               : !strcmp(role, "window") ? WINDOW : STATE;
    } else if (sscanf(line, "out %127s %31s", name, role) == 2) {
      Io *io = &s->out[s->n_out++];
      snprintf(io->name, sizeof io->name, "%s", name);
      io->role = !strcmp(role, "logits") ? LOGITS : ROWS;
      if (io->role == ROWS && sscanf(line, "out %*s rows %d %d", &io->target, &io->dim) != 2)
        die("bad rows line: ", line);
    }
  }
  fclose(f);
  if (!s->prompt_len || s->prompt_len > 32) die("the prompt must be 1 to 32 ids (one prefill chunk)", NULL);
}

/* ---- the model -------------------------------------------------------------------- */

typedef struct {
  Handle env, model, options, compiled;
  char toml[1200];
} Compiled;

static void compile(Compiled *c, const uint8_t *model, size_t length, const char *cache) {
  memset(c, 0, sizeof *c);
  check(LiteRtCreateEnvironment(0, NULL, &c->env), "LiteRtCreateEnvironment");
  check(LiteRtCreateModelFromBuffer(c->env, model, length, &c->model), "LiteRtCreateModelFromBuffer");
  check(LiteRtCreateOptions(&c->options), "LiteRtCreateOptions");
  check(LiteRtSetOptionsHardwareAccelerators(c->options, kLiteRtHwAcceleratorCpu), "setting the CPU accelerator");
  snprintf(c->toml, sizeof c->toml, "num_threads = 1\nweight_cache_file_path = \"%s\"\n", cache);
  Handle opaque;
  check(LiteRtCreateOpaqueOptions("xnnpack", c->toml, keep_payload, &opaque), "LiteRtCreateOpaqueOptions");
  check(LiteRtAddOpaqueOptions(c->options, opaque), "LiteRtAddOpaqueOptions");
  check(LiteRtCreateCompiledModel(c->env, c->model, c->options, &c->compiled), "LiteRtCreateCompiledModel");
}

static void destroy(Compiled *c) {
  LiteRtDestroyCompiledModel(c->compiled);
  LiteRtDestroyOptions(c->options);
  LiteRtDestroyModel(c->model);
  LiteRtDestroyEnvironment(c->env);
}

typedef struct {
  const Spec *spec;
  Compiled c;
  LiteRtRankedTensorType in_type[MAX_IO];        /* as the signature declares them */
  void *in_data[MAX_IO], *out_data[MAX_IO];      /* host memory, at the largest shapes */
  Handle state_buffer[MAX_IO];                   /* bound once: the KV cache in place */
  LiteRtLayout out_layout[MAX_IO];               /* for the current shapes */
  int T, W;                                      /* the current dynamic sizes */
} Runner;

static void set_dims(LiteRtLayout *l, int role_size) { l->dimensions[l->rank - 1] = role_size; }

static void resize(Runner *r, int T, int W) {
  const Spec *s = r->spec;
  for (int i = 0; i < s->n_in; i++) {
    if (s->in[i].role == STATE) continue;
    LiteRtLayout l = r->in_type[i].layout;
    set_dims(&l, s->in[i].role == WINDOW ? W : T);
    check(LiteRtCompiledModelResizeInputTensor(r->c.compiled, 0, i, l.dimensions, l.rank), "resizing an input");
  }
  check(LiteRtGetCompiledModelOutputTensorLayouts(r->c.compiled, 0, s->n_out, r->out_layout, true),
        "LiteRtGetCompiledModelOutputTensorLayouts");
  r->T = T, r->W = W;
}

static void bind(Runner *r) {
  const Spec *s = r->spec;
  Handle signature;
  size_t n_in, n_out;
  check(LiteRtGetModelSignature(r->c.model, 0, &signature), "LiteRtGetModelSignature");
  check(LiteRtGetNumSignatureInputs(signature, &n_in), "LiteRtGetNumSignatureInputs");
  check(LiteRtGetNumSignatureOutputs(signature, &n_out), "LiteRtGetNumSignatureOutputs");
  if ((int)n_in != s->n_in || (int)n_out != s->n_out) die("the spec and the model disagree on the signature", NULL);
  for (size_t i = 0; i < n_in; i++) {
    const char *name;
    Handle tensor;
    check(LiteRtGetSignatureInputName(signature, i, &name), "LiteRtGetSignatureInputName");
    if (strcmp(name, s->in[i].name)) die("input order differs from the spec at ", name);
    check(LiteRtGetSignatureInputTensorByIndex(signature, i, &tensor), "LiteRtGetSignatureInputTensorByIndex");
    check(LiteRtGetRankedTensorType(tensor, &r->in_type[i]), "LiteRtGetRankedTensorType");
    size_t bytes = count_of(&r->in_type[i].layout) * element_size(r->in_type[i].element_type);
    r->in_data[i] = aligned_zeros(bytes); /* the written sizes are the largest (chunk 32, window = cache) */
    if (s->in[i].role == STATE)
      check(LiteRtCreateTensorBufferFromHostMemory(&r->in_type[i], r->in_data[i], bytes, NULL,
                                                   &r->state_buffer[i]), "binding a state input");
  }
  for (size_t i = 0; i < n_out; i++) {
    const char *name;
    check(LiteRtGetSignatureOutputName(signature, i, &name), "LiteRtGetSignatureOutputName");
    if (strcmp(name, s->out[i].name)) die("output order differs from the spec at ", name);
  }
  int T_max = 0, W_max = 0;
  for (int i = 0; i < s->n_in; i++) {
    LiteRtLayout *l = &r->in_type[i].layout;
    if (s->in[i].role == TOKENS) T_max = l->dimensions[l->rank - 1];
    if (s->in[i].role == WINDOW) W_max = l->dimensions[l->rank - 1];
  }
  resize(r, T_max, W_max);
  for (int i = 0; i < s->n_out; i++) /* every output of these models is float32 (logits, cache rows) */
    r->out_data[i] = aligned_zeros(count_of(&r->out_layout[i]) * 4);
}

/* One call: ids at positions start.., the window over the rows filled before it
 * rounded up to 32 (one_graph.window_length); the rows out are written into the cache. */
static const float *run(Runner *r, const int64_t *ids, int T, int start, int *vocab) {
  const Spec *s = r->spec;
  int S = 0;
  for (int i = 0; i < s->n_in; i++)
    if (s->in[i].role == WINDOW) S = r->in_type[i].layout.dimensions[0];
  int W = ((start + 31) / 32) * 32;
  W = W < 32 ? 32 : W > S ? S : W;
  if (T != r->T || W != r->W) resize(r, T, W);
  Handle ins[MAX_IO], outs[MAX_IO];
  for (int i = 0; i < s->n_in; i++) {
    if (s->in[i].role == STATE) { ins[i] = r->state_buffer[i]; continue; }
    int64_t *v = r->in_data[i];
    int n = s->in[i].role == WINDOW ? W : T;
    for (int k = 0; k < n; k++)
      v[k] = s->in[i].role == TOKENS ? ids[k] : s->in[i].role == POSITIONS ? start + k : k;
    LiteRtRankedTensorType t = r->in_type[i];
    set_dims(&t.layout, n);
    check(LiteRtCreateTensorBufferFromHostMemory(&t, v, (size_t)n * 8, NULL, &ins[i]), "binding an input");
  }
  for (int i = 0; i < s->n_out; i++) {
    LiteRtRankedTensorType t = {kFloat32, r->out_layout[i]};
    check(LiteRtCreateTensorBufferFromHostMemory(&t, r->out_data[i], count_of(&t.layout) * 4, NULL, &outs[i]),
          "binding an output");
  }
  check(LiteRtRunCompiledModel(r->c.compiled, 0, s->n_in, ins, s->n_out, outs), "LiteRtRunCompiledModel");
  const float *logits = NULL;
  for (int i = 0; i < s->n_out; i++) {
    LiteRtLayout *rows = &r->out_layout[i];
    if (s->out[i].role == LOGITS) {
      logits = r->out_data[i];
      *vocab = rows->dimensions[rows->rank - 1];
      continue;
    }
    /* state[..., start + t, ...] = rows[..., t, ...] along dim */
    const LiteRtLayout *state = &r->in_type[s->out[i].target].layout;
    int d = s->out[i].dim;
    size_t outer = 1, inner = element_size(r->in_type[s->out[i].target].element_type);
    for (int k = 0; k < d; k++) outer *= state->dimensions[k];
    for (unsigned k = d + 1; k < state->rank; k++) inner *= state->dimensions[k];
    uint8_t *dst = r->in_data[s->out[i].target];
    const uint8_t *src = r->out_data[i];
    for (size_t o = 0; o < outer; o++)
      for (int t = 0; t < T; t++)
        memcpy(dst + (o * state->dimensions[d] + start + t) * inner, src + (o * T + t) * inner, inner);
  }
  for (int i = 0; i < s->n_in; i++)
    if (s->in[i].role != STATE) LiteRtDestroyTensorBuffer(ins[i]);
  for (int i = 0; i < s->n_out; i++) LiteRtDestroyTensorBuffer(outs[i]);
  return logits;
}

static int64_t argmax(const float *v, int n) {
  int best = 0;
  for (int i = 1; i < n; i++)
    if (v[i] > v[best]) best = i;
  return best;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 3) die("usage: native_floor SPEC CACHE_FILE [NEW_TOKENS [PAGES_OUT]]", NULL);
  static Spec spec;
  read_spec(argv[1], &spec);
  cache_path = argv[2];
  program_path = spec.program;
  int new_tokens = argc > 3 ? atoi(argv[3]) : 16;
  report("start");

  int fd = open(spec.program, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st)) die("cannot open ", spec.program);
  uint8_t *map = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) die("cannot map ", spec.program);
  const uint8_t *model = map + spec.offset;
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t a = (uintptr_t)model & ~(uintptr_t)(page - 1); /* the model's pages: [a, model + length) */
  /* NATIVE_FLOOR_RANDOM=1: tell the kernel the model is read at random (no read-ahead,
   * no fault-around), to see whether a read maps fewer pages around it */
  const char *random_reads = getenv("NATIVE_FLOOR_RANDOM");
  if (random_reads && *random_reads == '1') madvise((void *)a, (uintptr_t)model + spec.length - a, MADV_RANDOM);
  /* NATIVE_FLOOR_DROP=1: drop the model's range of the file from the page cache before
   * and after compiling (with MADV_RANDOM), so later reads bring in small folios */
  const char *drop = getenv("NATIVE_FLOOR_DROP");
  bool drop_cache = drop && *drop == '1';
  if (drop_cache) {
    madvise((void *)a, (uintptr_t)model + spec.length - a, MADV_RANDOM);
    posix_fadvise(fd, (off_t)spec.offset, (off_t)spec.length, POSIX_FADV_DONTNEED);
  }

  static Runner r;
  r.spec = &spec;
  double t0 = now();
  struct stat cache_st;
  bool built = stat(cache_path, &cache_st) != 0;
  if (built) { /* build under a name no load trusts, then compile again from the file */
    char building[1100];
    snprintf(building, sizeof building, "%s.building", cache_path);
    unlink(building);
    compile(&r.c, model, spec.length, building);
    report("packed");
    destroy(&r.c);
    if (rename(building, cache_path)) die("cannot rename the cache to ", cache_path);
  }
  compile(&r.c, model, spec.length, cache_path);
  double t_compile = now() - t0;
  /* let the model's pages go, as compiled.py does once XNNPACK runs from the cache */
  madvise((void *)a, (uintptr_t)model + spec.length - a, MADV_DONTNEED);
  if (drop_cache) posix_fadvise(fd, (off_t)spec.offset, (off_t)spec.length, POSIX_FADV_DONTNEED);
  close(fd);
  /* NATIVE_FLOOR_RELEASE=1: let the model's pages go after every decode call (what
   * TFLite's GATHER mapped of the embedding table stays one token's folio at most) */
  const char *release = getenv("NATIVE_FLOOR_RELEASE");
  bool release_each_call = release && *release == '1';
  printf("compiled in %.2f s (%s the weight cache %s)\n", t_compile, built ? "built" : "reused", cache_path);
  report("compiled");

  bind(&r);
  report("bound");
  int positions = 0; /* the KV cache's positions: the window's largest size */
  for (int i = 0; i < spec.n_in; i++)
    if (spec.in[i].role == WINDOW) positions = r.in_type[i].layout.dimensions[0];
  if (new_tokens < 1 || new_tokens > 1024 || spec.prompt_len + new_tokens - 1 > positions)
    die("NEW_TOKENS must be 1 to 1024 and the prompt plus them fit the KV cache", NULL);
  int vocab = 0;
  int64_t generated[1024];
  t0 = now();
  const float *logits = run(&r, spec.prompt, spec.prompt_len, 0, &vocab);
  double t_prefill = now() - t0;
  generated[0] = argmax(logits, vocab);
  report("prefill");
  t0 = now();
  for (int k = 1; k < new_tokens; k++) {
    logits = run(&r, &generated[k - 1], 1, spec.prompt_len + k - 1, &vocab);
    generated[k] = argmax(logits, vocab);
    if (release_each_call) madvise((void *)a, (uintptr_t)model + spec.length - a, MADV_DONTNEED);
  }
  double t_decode = now() - t0;
  printf("prefill %d ids %.3f s, %d decode calls %.3f s (%.1f ms each, wall)\n", spec.prompt_len, t_prefill,
         new_tokens - 1, t_decode, new_tokens > 1 ? 1000 * t_decode / (new_tokens - 1) : 0.0);
  printf("generated ids:");
  for (int k = 0; k < new_tokens; k++) printf(" %ld", (long)generated[k]);
  printf("\n");
  report("end");
  if (argc > 4) write_resident_pages(argv[4], model, spec.length);
  return 0;
}
