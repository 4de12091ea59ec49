/* edgeport's native LLM runner: `edgeport llm generate PROGRAM --native`.
 *
 * Generates with a cpu LLM program's one-graph model (core/llm/one_graph.py) through
 * LiteRT's C API (libLiteRt.so of the ai-edge-litert wheel) with nothing else in the
 * process: no Python interpreter, numpy or tokenizer, so peak memory is the weights'
 * packed cache, the KV cache and LiteRT's own (issue 16; bench/README.md, "Native
 * generation"). Python does everything that needs the program's tokenizer or manifest
 * (core/llm/native/__init__.py): it verifies the program, renders and encodes the
 * prompt, writes a spec file and execs this program, in the same process.
 *
 *   runner SPEC
 *
 * SPEC (written by native/__init__.py, unlinked here once read) says where the model lies
 * in the program file, its XNNPACK weight cache file, the threads, the sampling
 * parameters (temperature, top-p, seed), the prompt ids, the
 * stop ids, the cache's facts (positions, prefill chunk, window bucket), the role of
 * every input and output in signature order, and the decode table (token id -> bytes).
 *
 * What it does, as the Python session does it (session.py, backends/tflite/compiled.py):
 * the program file is mapped read-only and the model read in place; it is compiled on
 * CPU (XNNPACK) with the weight cache (built under a name of this process's own, renamed
 * once whole, then compiled again from the file), and the model's range of the file is
 * let go from this process and the page cache around compiling (mapped_file.forget).
 * The KV cache inputs are updated in place with the rows each call outputs (the plan's
 * row updates); a cache read whole is bound once, one read as its first W rows (the
 * plan's state prefixes) is bound at each call over the same memory, so no row is copied. The prompt is prefilled in chunks, each with the
 * window over the rows filled before it (one_graph.window_length), after the two
 * warm-up calls the Python CLI makes (Session.warm_up); then it decodes, picking
 * each token by edgeport's sampling rule (core/llm/sampling.py: greedy at temperature 0,
 * else SplitMix64 draws over the top-p nucleus), streaming each token's bytes (a character split over tokens is
 * printed once whole), until a stop id or the token budget. It ends with the same
 * speed line, or JSON, as `edgeport llm generate`.
 *
 * No LiteRT header ships in the wheel: the few structs and calls used are declared here,
 * matched to LiteRT 2.3's C headers (each declaration names its header).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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

static void restore_stderr(void);

/* An error is one line, as the Python CLI prints an EdgeportError ("Error: ..."), after
 * what LiteRT logged while stderr was held back (its own reason). */
static void die(const char *message, const char *detail) {
  fflush(stdout);
  restore_stderr();
  fprintf(stderr, "Error: native runner: %s%s\n", message, detail ? detail : "");
  exit(1);
}

/* Flush what was written to stdout, or end as an error: a full disk (> /dev/full) lost
 * the output and still exited 0. (A reader that left, | head, ends the runner by SIGPIPE,
 * which the Python CLI restores to its default before the exec.) */
static void flush_output(void) {
  if (fflush(stdout) != 0 || ferror(stdout)) die("cannot write the output: ", strerror(errno));
}

static void check(int status, const char *what) {
  if (status != 0) {
    char detail[64];
    snprintf(detail, sizeof detail, " failed (LiteRT status %d)", status);
    die(what, detail);
  }
}

static void keep_payload(void *payload) { (void)payload; /* ours: freed with the model */ }

static size_t element_size(int type) {
  switch (type) {
    case kFloat32: case kInt32: return 4;
    case kInt64: return 8;
    case kInt8: return 1;
    default: die("the model has an input of an element type this runner does not bind", NULL); return 0;
  }
}

static size_t count_of(const LiteRtLayout *layout) {
  size_t n = 1;
  for (unsigned i = 0; i < layout->rank; i++) n *= (size_t)layout->dimensions[i];
  return n;
}

/* A zeroed 64-byte aligned block with 64 bytes after it (XNNPACK may read past a
 * tensor's end): what litert_c.aligned_empty gives. A large one is an anonymous map,
 * whose pages come on first write: a memset made the whole KV cache resident before the
 * first token (SmolLM2 at 8,192 positions: 360 MiB). Never freed: the process ends. */
static void *aligned_zeros(size_t bytes) {
  if (bytes >= (128u << 10)) { /* glibc malloc's own first threshold for a map of its own */
    void *m = mmap(NULL, bytes + 64, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("out of memory", NULL);
    return m;
  }
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes + 64) != 0) die("out of memory", NULL);
  memset(p, 0, bytes + 64);
  return p;
}

static double now(void) { /* CLOCK_MONOTONIC: Python's time.monotonic, so a start time crosses exec */
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* This process's peak resident memory (VmHWM, which exec restarts), MiB. */
static double peak_rss_mb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) kib = atol(line + 6);
  if (f) fclose(f);
  return kib / 1024.0;
}

/* ---- the spec --------------------------------------------------------------------- */

/* STATE: a KV cache read whole, bound once; PREFIX: one read as its first W rows (the
 * plan's state prefixes), bound at each call over the same memory */
enum Role { TOKENS, POSITIONS, WINDOW, STATE, PREFIX, LOGITS, ROWS };
typedef struct {
  char name[128];
  enum Role role;
  int target, dim; /* ROWS: the state input they are written into, along dim */
} Io;
typedef struct {
  char *program, *cache;          /* paths; cache "" = no weight cache */
  size_t offset, length;          /* the model's bytes in the program file */
  int threads, max_seq_len, chunk, bucket, max_new_tokens, json;
  char budget_reason[16];         /* the stop reason when max_new_tokens are made: "max_new_tokens" or "max_seq_len" */
  double start_time;              /* CLOCK_MONOTONIC when the command started (for ready_s) */
  double temperature, top_p;      /* the sampling rule's (core/llm/sampling.py) */
  uint64_t seed;
  int64_t *prompt, *stops;
  int prompt_len, n_stops;
  Io in[MAX_IO], out[MAX_IO];
  int n_in, n_out;
  int vocab;                      /* decode table: token i's bytes are blob[at[i] .. at[i + 1]) */
  int strip_leading_space;        /* the decoder drops the text's first space (SentencePiece's Strip) */
  uint32_t *at;
  uint8_t *blob;
} Spec;

static int64_t *read_ids(const char *text, int *count) {
  int64_t *ids = malloc((strlen(text) / 2 + 1) * sizeof *ids);
  char *end;
  *count = 0;
  for (long v = strtol(text, &end, 10); end != text; v = strtol(text, &end, 10)) {
    ids[(*count)++] = v;
    text = end;
  }
  return ids;
}

static int hex_digit(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* The decode table: ``vocab`` lines after the "vocab N" line, each a token's bytes in hex. */
static void read_table(FILE *f, Spec *s) {
  char *line = NULL;
  size_t cap = 0, used = 0, room = 1 << 16;
  s->at = malloc((s->vocab + 1) * sizeof *s->at);
  s->blob = malloc(room);
  for (int i = 0; i < s->vocab; i++) {
    ssize_t n = getline(&line, &cap, f);
    if (n < 0) die("the spec's decode table is short", NULL);
    s->at[i] = used;
    for (ssize_t k = 0; k + 1 < n && line[k] != '\n'; k += 2) {
      if (used == room) s->blob = realloc(s->blob, room *= 2);
      s->blob[used++] = (uint8_t)(hex_digit(line[k]) << 4 | hex_digit(line[k + 1]));
    }
  }
  s->at[s->vocab] = used;
  free(line);
}

static void read_spec(const char *path, Spec *s) {
  FILE *f = fopen(path, "r");
  if (!f) die("cannot open the spec ", path);
  unlink(path); /* private to this run: gone as soon as it is open */
  char *line = NULL, name[128], role[32];
  size_t cap = 0;
  ssize_t n;
  memset(s, 0, sizeof *s);
  while ((n = getline(&line, &cap, f)) > 0) {
    if (line[n - 1] == '\n') line[n - 1] = 0;
    char *value = strchr(line, ' ');
    value = value ? value + 1 : line + n;
#define KEY(k) (!strncmp(line, k " ", sizeof k))
    if (KEY("program")) s->program = strdup(value);
    else if (KEY("cache")) s->cache = strdup(value);
    else if (KEY("model")) sscanf(value, "%zu %zu", &s->offset, &s->length);
    else if (KEY("threads")) s->threads = atoi(value);
    else if (KEY("max_seq_len")) s->max_seq_len = atoi(value);
    else if (KEY("chunk")) s->chunk = atoi(value);
    else if (KEY("window_bucket")) s->bucket = atoi(value);
    else if (KEY("max_new_tokens")) s->max_new_tokens = atoi(value);
    else if (KEY("budget_reason")) snprintf(s->budget_reason, sizeof s->budget_reason, "%s", value);
    else if (KEY("json")) s->json = atoi(value);
    else if (KEY("start_time")) s->start_time = atof(value);
    else if (KEY("temperature")) s->temperature = strtod(value, NULL);
    else if (KEY("top_p")) s->top_p = strtod(value, NULL);
    else if (KEY("seed")) s->seed = strtoull(value, NULL, 10);
    else if (KEY("strip_leading_space")) s->strip_leading_space = atoi(value);
    else if (KEY("prompt")) s->prompt = read_ids(value, &s->prompt_len);
    else if (KEY("stop")) s->stops = read_ids(value, &s->n_stops);
    else if (sscanf(line, "in %127s %31s", name, role) == 2 && s->n_in < MAX_IO) {
      Io *io = &s->in[s->n_in++];
      snprintf(io->name, sizeof io->name, "%s", name);
      io->role = !strcmp(role, "tokens") ? TOKENS : !strcmp(role, "positions") ? POSITIONS
               : !strcmp(role, "window") ? WINDOW : !strcmp(role, "prefix") ? PREFIX : STATE;
    } else if (sscanf(line, "out %127s %31s", name, role) == 2 && s->n_out < MAX_IO) {
      Io *io = &s->out[s->n_out++];
      snprintf(io->name, sizeof io->name, "%s", name);
      io->role = !strcmp(role, "logits") ? LOGITS : ROWS;
      if (io->role == ROWS && sscanf(line, "out %*s rows %d %d", &io->target, &io->dim) != 2)
        die("a bad rows line in the spec: ", line);
    } else if (KEY("vocab")) {
      s->vocab = atoi(value);
      read_table(f, s);
    }
#undef KEY
  }
  free(line);
  fclose(f);
  if (!s->program || !s->cache || !(s->top_p > 0) || !s->length || !s->vocab || !s->prompt_len || s->chunk < 1 || s->bucket < 1
      || !s->budget_reason[0])
    die("the spec is incomplete: ", path);
  if (s->prompt_len + s->max_new_tokens - 1 > s->max_seq_len) /* Python refuses this first, with a hint */
    die("the prompt plus the new tokens do not fit the KV cache", NULL);
}

/* ---- LiteRT's chatter -------------------------------------------------------------- */

/* LiteRT logs INFO lines, and that this host has no NPU or GPU accelerator, to stderr
 * whenever a model compiles (backends/tflite/compiled.py drops them): stderr goes to a
 * temporary file meanwhile, and the rest of what was written is passed on. */
static int saved_stderr = -1; /* the real stderr while it is held back */

static void quiet_stderr(void) {
  fflush(stderr);
  FILE *tmp = tmpfile();
  saved_stderr = tmp ? dup(2) : -1;
  if (saved_stderr >= 0) dup2(fileno(tmp), 2);
  if (tmp) fclose(tmp); /* fd 2 keeps the file open */
}

static void restore_stderr(void) {
  if (saved_stderr < 0) return;
  fflush(stderr);
  FILE *tmp = fdopen(dup(2), "r");
  dup2(saved_stderr, 2);
  close(saved_stderr);
  saved_stderr = -1;
  if (!tmp) return;
  rewind(tmp);
  char line[1024];
  while (fgets(line, sizeof line, tmp))
    if (strncmp(line, "INFO: ", 6) && strncmp(line, "WARNING: [npu_registry.cc", 25) &&
        strncmp(line, "WARNING: [gpu_registry.cc", 25))
      fputs(line, stderr);
  fclose(tmp);
}

/* ---- the model -------------------------------------------------------------------- */

typedef struct {
  Handle env, model, options, compiled;
  char toml[4200];
} Compiled;

static void compile(Compiled *c, const uint8_t *model, size_t length, int threads, const char *cache) {
  memset(c, 0, sizeof *c);
  quiet_stderr();
  check(LiteRtCreateEnvironment(0, NULL, &c->env), "LiteRtCreateEnvironment");
  check(LiteRtCreateModelFromBuffer(c->env, model, length, &c->model), "LiteRtCreateModelFromBuffer");
  check(LiteRtCreateOptions(&c->options), "LiteRtCreateOptions");
  check(LiteRtSetOptionsHardwareAccelerators(c->options, kLiteRtHwAcceleratorCpu), "setting the CPU accelerator");
  int used = snprintf(c->toml, sizeof c->toml, "num_threads = %d\n", threads);
  if (*cache) snprintf(c->toml + used, sizeof c->toml - used, "weight_cache_file_path = \"%s\"\n", cache);
  Handle opaque;
  check(LiteRtCreateOpaqueOptions("xnnpack", c->toml, keep_payload, &opaque), "LiteRtCreateOpaqueOptions");
  check(LiteRtAddOpaqueOptions(c->options, opaque), "LiteRtAddOpaqueOptions");
  check(LiteRtCreateCompiledModel(c->env, c->model, c->options, &c->compiled), "compiling the model");
  restore_stderr();
}

static void destroy(Compiled *c) {
  LiteRtDestroyCompiledModel(c->compiled);
  LiteRtDestroyOptions(c->options);
  LiteRtDestroyModel(c->model);
  LiteRtDestroyEnvironment(c->env);
}

/* The program file, mapped; the model is the range [offset, offset + length) of it. */
typedef struct {
  const char *path;
  uint8_t *map;
  const uint8_t *model;
  size_t length;
} Mapped;

/* Let the model's pages go from this process and its range of the file from the page
 * cache, and read it page by page from now on: core/mapped_file.forget, for the same
 * reason (what compiling from the cache glances at maps a page, not a large folio). */
static void forget(const Mapped *m, size_t offset) {
  long page = sysconf(_SC_PAGESIZE);
  uint8_t *a = (uint8_t *)((uintptr_t)m->model & ~(uintptr_t)(page - 1));
  size_t bytes = (size_t)(m->model + m->length - a);
  madvise(a, bytes, MADV_DONTNEED);
  int fd = open(m->path, O_RDONLY);
  if (fd >= 0) {
    fdatasync(fd); /* only clean pages can be dropped: a program just exported may not be on disk yet */
    posix_fadvise(fd, (off_t)(offset - (size_t)(m->model - a)), (off_t)bytes, POSIX_FADV_DONTNEED);
    close(fd);
  }
  madvise(a, bytes, MADV_RANDOM);
}

/* Compile with the weight cache as compiled.py does: when the cache file does not exist
 * it is built under a name of this process's own, the model that built it destroyed,
 * the file renamed, and the model compiled again from it. */
static void compile_cached(Compiled *c, const Mapped *m, const Spec *s) {
  struct stat st;
  if (!*s->cache) {
    compile(c, m->model, m->length, s->threads, "");
    return;
  }
  if (stat(s->cache, &st) != 0) {
    char building[4200]; /* beside the cache, in the directory Python made before exec */
    snprintf(building, sizeof building, "%s.%d.building", s->cache, (int)getpid());
    compile(c, m->model, m->length, s->threads, building);
    quiet_stderr();
    destroy(c);
    restore_stderr();
    if (rename(building, s->cache)) die("cannot publish the weight cache ", s->cache);
  }
  forget(m, s->offset);
  compile(c, m->model, m->length, s->threads, s->cache);
  forget(m, s->offset); /* XNNPACK runs from the cache: let go what compiling read, for good */
}

typedef struct {
  const Spec *spec;
  Compiled c;
  LiteRtRankedTensorType in_type[MAX_IO]; /* as the signature declares them */
  void *in_data[MAX_IO], *out_data[MAX_IO]; /* host memory, at the largest shapes */
  Handle state_buffer[MAX_IO];            /* bound once: the KV cache in place */
  LiteRtLayout out_layout[MAX_IO];        /* for the current shapes */
  int T, W;                               /* the current dynamic sizes */
} Runner;

static void set_last_dim(LiteRtLayout *l, int size) { l->dimensions[l->rank - 1] = size; }

static void resize(Runner *r, int T, int W) {
  const Spec *s = r->spec;
  for (int i = 0; i < s->n_in; i++) {
    if (s->in[i].role == STATE) continue;
    LiteRtLayout l = r->in_type[i].layout;
    if (s->in[i].role == PREFIX) l.dimensions[0] = W;
    else set_last_dim(&l, s->in[i].role == WINDOW ? W : T);
    check(LiteRtCompiledModelResizeInputTensor(r->c.compiled, 0, i, l.dimensions, l.rank), "resizing an input");
  }
  check(LiteRtGetCompiledModelOutputTensorLayouts(r->c.compiled, 0, s->n_out, r->out_layout, true),
        "LiteRtGetCompiledModelOutputTensorLayouts");
  r->T = T, r->W = W;
}

/* Check the signature against the spec, allocate every buffer at its largest shape
 * (a chunk of the prefill length, the window over the whole cache) and bind the KV
 * cache inputs once. */
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
    if (strcmp(name, s->in[i].name)) die("the model's inputs are not in the spec's order at ", name);
    check(LiteRtGetSignatureInputTensorByIndex(signature, i, &tensor), "LiteRtGetSignatureInputTensorByIndex");
    check(LiteRtGetRankedTensorType(tensor, &r->in_type[i]), "LiteRtGetRankedTensorType");
    if (s->in[i].role == PREFIX) r->in_type[i].layout.dimensions[0] = s->max_seq_len; /* the whole cache */
    LiteRtLayout largest = r->in_type[i].layout;
    if (s->in[i].role == TOKENS || s->in[i].role == POSITIONS) set_last_dim(&largest, s->chunk);
    if (s->in[i].role == WINDOW) set_last_dim(&largest, s->max_seq_len);
    size_t bytes = count_of(&largest) * element_size(r->in_type[i].element_type);
    r->in_data[i] = aligned_zeros(bytes);
    if (s->in[i].role == STATE)
      check(LiteRtCreateTensorBufferFromHostMemory(&r->in_type[i], r->in_data[i], bytes, NULL,
                                                   &r->state_buffer[i]), "binding a KV cache input");
  }
  for (size_t i = 0; i < n_out; i++) {
    const char *name;
    check(LiteRtGetSignatureOutputName(signature, i, &name), "LiteRtGetSignatureOutputName");
    if (strcmp(name, s->out[i].name)) die("the model's outputs are not in the spec's order at ", name);
  }
  resize(r, s->chunk, s->max_seq_len);
  for (int i = 0; i < s->n_out; i++) /* every output of these models is float32 (logits, cache rows) */
    r->out_data[i] = aligned_zeros(count_of(&r->out_layout[i]) * 4);
}

/* one_graph.window_length: the rows filled before ``start``, rounded up to the bucket
 * (at least one bucket, at most the cache). */
static int window_length(const Spec *s, int start) {
  int W = (start + s->bucket - 1) / s->bucket * s->bucket;
  W = W < s->bucket ? s->bucket : W;
  return W > s->max_seq_len ? s->max_seq_len : W;
}

/* One call: ``T`` ids at positions start..; the rows out are written into the cache.
 * Returns the logits of the last id (``*vocab`` of them). */
static const float *run(Runner *r, const int64_t *ids, int T, int start, int *vocab) {
  const Spec *s = r->spec;
  int W = window_length(s, start);
  if (T != r->T || W != r->W) resize(r, T, W);
  Handle ins[MAX_IO], outs[MAX_IO];
  for (int i = 0; i < s->n_in; i++) {
    if (s->in[i].role == STATE) { ins[i] = r->state_buffer[i]; continue; }
    if (s->in[i].role == PREFIX) { /* the cache's first W positions, where they lie */
      LiteRtRankedTensorType t = r->in_type[i];
      t.layout.dimensions[0] = W;
      check(LiteRtCreateTensorBufferFromHostMemory(&t, r->in_data[i], count_of(&t.layout) *
                                                   element_size(t.element_type), NULL, &ins[i]), "binding a cache window");
      continue;
    }
    int64_t *v = r->in_data[i];
    int n = s->in[i].role == WINDOW ? W : T;
    for (int k = 0; k < n; k++)
      v[k] = s->in[i].role == TOKENS ? ids[k] : s->in[i].role == POSITIONS ? start + k : k;
    LiteRtRankedTensorType t = r->in_type[i];
    set_last_dim(&t.layout, n);
    check(LiteRtCreateTensorBufferFromHostMemory(&t, v, (size_t)n * 8, NULL, &ins[i]), "binding an input");
  }
  for (int i = 0; i < s->n_out; i++) {
    LiteRtRankedTensorType t = {kFloat32, r->out_layout[i]};
    check(LiteRtCreateTensorBufferFromHostMemory(&t, r->out_data[i], count_of(&t.layout) * 4, NULL, &outs[i]),
          "binding an output");
  }
  check(LiteRtRunCompiledModel(r->c.compiled, 0, s->n_in, ins, s->n_out, outs), "running the model");
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
  if (!logits) die("the model has no logits output", NULL);
  return logits;
}

/* Prefill ``ids`` from position 0 in chunks of the program's prefill length. */
static const float *prefill(Runner *r, const int64_t *ids, int n, int *vocab) {
  const float *logits = NULL;
  for (int at = 0; at < n; at += r->spec->chunk) {
    int T = n - at < r->spec->chunk ? n - at : r->spec->chunk;
    logits = run(r, ids + at, T, at, vocab);
  }
  return logits;
}

/* ---- picking the next token: core/llm/sampling.py's rule, step for step ------------- */

static int64_t argmax(const float *v, int n) { /* the first of equal maxima, as numpy's */
  int best = 0;
  for (int i = 1; i < n; i++)
    if (v[i] > v[best]) best = i;
  return best;
}

/* SplitMix64 (sampling.SplitMix64): a double in [0, 1) from the top 53 bits. */
static double uniform(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1p-53;
}

typedef struct {
  float logit;
  int id;
  double running; /* the sum of the weights up to this token, in this order */
} Candidate;

static int by_logit(const void *a, const void *b) { /* largest first; equal logits by lower id */
  const Candidate *x = a, *y = b;
  if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
  return x->id - y->id;
}

/* Sampler.pick: weights exp(z - max z) with z = logit / temperature in float64, the
 * tokens ordered by logit, the nucleus up to the first whose running sum reaches top_p
 * of the total, and the first in it whose running sum exceeds u times the nucleus's. */
static int64_t pick(const Spec *s, uint64_t *rng, const float *logits, int n, Candidate *c) {
  if (s->temperature <= 0) return argmax(logits, n);
  double top = (double)logits[argmax(logits, n)] / s->temperature;
  for (int i = 0; i < n; i++) c[i] = (Candidate){logits[i], i, 0.0};
  qsort(c, n, sizeof *c, by_logit);
  double sum = 0.0;
  for (int k = 0; k < n; k++) c[k].running = sum += exp((double)c[k].logit / s->temperature - top);
  int last = 0;
  while (last < n - 1 && c[last].running < s->top_p * sum) last++;
  double target = uniform(rng) * c[last].running;
  for (int k = 0; k < last; k++)
    if (c[k].running > target) return c[k].id;
  return c[last].id; /* u * c may round up to c itself */
}

/* ---- text out ---------------------------------------------------------------------- */

/* The generated text, as bytes: what is printed is only whole UTF-8 characters, so a
 * character split over two tokens comes out once, with its last token (as the Python
 * session's TextStream); a byte that cannot start or continue one becomes U+FFFD. */
typedef struct {
  uint8_t *bytes;
  size_t len, cap, shown; /* bytes[0:shown] are whole characters, already given out */
  bool strip;             /* the first byte added is dropped if a space (the Python stream's Strip) */
} Text;

static size_t utf8_length(uint8_t lead) {
  return lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 0;
}

static void text_add(Text *t, const uint8_t *bytes, size_t n) {
  if (t->strip && n > 0) {
    if (bytes[0] == ' ') bytes++, n--;
    t->strip = false;
  }
  if (t->len + n + 3 > t->cap) t->bytes = realloc(t->bytes, t->cap = 2 * (t->len + n + 3));
  for (size_t i = 0; i < n; i++) t->bytes[t->len++] = bytes[i];
}

/* Bytes [shown, returned) are now whole characters (invalid bytes replaced). */
static size_t text_complete(Text *t) {
  size_t at = t->shown;
  while (at < t->len) {
    size_t n = utf8_length(t->bytes[at]), k = 1;
    while (n && k < n && at + k < t->len && (t->bytes[at + k] & 0xC0) == 0x80) k++;
    if (n && k == n) { at += n; continue; }
    if (n && at + k == t->len) break; /* a character still partial: wait for the next token */
    /* not UTF-8: replace the byte by U+FFFD (3 bytes for 1) */
    if (t->len + 2 > t->cap) t->bytes = realloc(t->bytes, t->cap = 2 * t->len + 3);
    memmove(t->bytes + at + 3, t->bytes + at + 1, t->len - at - 1);
    memcpy(t->bytes + at, "\xEF\xBF\xBD", 3);
    t->len += 2, at += 3;
  }
  return at;
}

static void json_string(const uint8_t *s, size_t n) {
  putchar('"');
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c == '"' || c == '\\') printf("\\%c", c);
    else if (c == '\n') fputs("\\n", stdout);
    else if (c == '\t') fputs("\\t", stdout);
    else if (c == '\r') fputs("\\r", stdout);
    else if (c < 0x20) printf("\\u%04x", c);
    else putchar(c);
  }
  putchar('"');
}

/* ---- generation -------------------------------------------------------------------- */

typedef struct {
  int generated, prefilled;
  double ready, first_token, prefill, decode, peak;
  const char *stop_reason;
} Stats;

static void print_stats(const Spec *s, const Stats *st, const int64_t *ids, const Text *text) {
  double prefill_tok_s = st->prefill > 0 ? st->prefilled / st->prefill : 0.0;
  int calls = st->generated > 1 ? st->generated - 1 : 0;
  double decode_tok_s = st->decode > 0 ? calls / st->decode : 0.0;
  if (!s->json) {
    /* as the Python CLI's speed line: decode counts the calls its rate divides, memory in MiB */
    fprintf(stderr, "ready in %.1f s · time to first token %.0f ms · prefill %.1f tok/s (%d token%s) · "
            "decode %.1f tok/s (%d token%s) · peak RSS %.0f MiB · stop: %s · native runner\n",
            st->ready, st->first_token * 1e3, prefill_tok_s, st->prefilled, st->prefilled == 1 ? "" : "s",
            decode_tok_s, calls, calls == 1 ? "" : "s", st->peak,
            !strcmp(st->stop_reason, "stop_token") ? "stop token"
            : !strcmp(st->stop_reason, "max_seq_len") ? "max seq len" : "max new tokens");
    return;
  }
  printf("{\n  \"text\": ");
  json_string(text->bytes, text->shown);
  printf(",\n  \"token_ids\": [");
  for (int k = 0; k < st->generated; k++) printf("%s%ld", k ? ", " : "", (long)ids[k]);
  printf("],\n  \"seed\": %llu,\n  \"stats\": {\n    \"ready_s\": %.6f,\n    \"prompt_tokens\": %d,\n    \"prefilled_tokens\": %d,\n"
         "    \"generated_tokens\": %d,\n    \"time_to_first_token_s\": %.6f,\n    \"prefill_s\": %.6f,\n"
         "    \"decode_s\": %.6f,\n    \"stop_reason\": \"%s\",\n    \"peak_rss_mb\": %.3f,\n"
         "    \"prefill_tok_s\": %.3f,\n    \"decode_tok_s\": %.3f\n  },\n  \"runs_on\": [],\n"
         "  \"runner\": \"native\"\n}\n",
         (unsigned long long)s->seed, st->ready, s->prompt_len, st->prefilled, st->generated, st->first_token, st->prefill, st->decode,
         st->stop_reason, st->peak, prefill_tok_s, decode_tok_s);
}

static bool is_stop(const Spec *s, int64_t id) {
  for (int i = 0; i < s->n_stops; i++)
    if (s->stops[i] == id) return true;
  return false;
}

int main(int argc, char **argv) {
  if (argc != 2) die("usage: runner SPEC (edgeport llm generate --native writes the spec and runs this)", NULL);
  static Spec spec;
  read_spec(argv[1], &spec);

  Mapped m = {spec.program, NULL, NULL, spec.length};
  int fd = open(spec.program, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st)) die("cannot open ", spec.program);
  if (spec.offset + spec.length > (size_t)st.st_size) die("the program file changed since it was read: ", spec.program);
  m.map = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m.map == MAP_FAILED) die("cannot map ", spec.program);
  m.model = m.map + spec.offset;

  static Runner r;
  r.spec = &spec;
  compile_cached(&r.c, &m, &spec);
  bind(&r);
  /* warm up as the Python CLI does (Session.warm_up), so the figures mean the same: one
   * call of one token at position 0, one at 1; the prompt's prefill overwrites both rows */
  int64_t zero = 0;
  int vocab = 0;
  run(&r, &zero, 1, 0, &vocab);
  run(&r, &zero, 1, 1, &vocab);
  Stats stats = {.prefilled = spec.prompt_len, .stop_reason = spec.budget_reason};
  stats.ready = now() - spec.start_time;

  int64_t *ids = malloc((spec.max_new_tokens + 1) * sizeof *ids);
  Text text = {.strip = spec.strip_leading_space};
  Candidate *candidates = malloc((size_t)vocab * sizeof *candidates);
  uint64_t rng = spec.seed;
  int position = spec.prompt_len;
  double t0 = now();
  const float *logits = prefill(&r, spec.prompt, spec.prompt_len, &vocab);
  stats.prefill = now() - t0;
  for (int step = 0; step < spec.max_new_tokens; step++) {
    int64_t token = pick(&spec, &rng, logits, vocab, candidates);
    if (step == 0) stats.first_token = now() - t0;
    if (is_stop(&spec, token)) {
      stats.stop_reason = "stop_token";
      break;
    }
    ids[stats.generated++] = token;
    if (token >= 0 && token < spec.vocab) text_add(&text, spec.blob + spec.at[token], spec.at[token + 1] - spec.at[token]);
    size_t whole = text_complete(&text);
    if (!spec.json) {
      fwrite(text.bytes + text.shown, 1, whole - text.shown, stdout);
      flush_output();
    }
    text.shown = whole;
    if (step == spec.max_new_tokens - 1) break;
    double t1 = now();
    logits = run(&r, &token, 1, position++, &vocab);
    stats.decode += now() - t1;
  }
  stats.peak = peak_rss_mb();
  if (!spec.json) putchar('\n');
  flush_output();
  print_stats(&spec, &stats, ids, &text);
  flush_output();
  return 0;
}
