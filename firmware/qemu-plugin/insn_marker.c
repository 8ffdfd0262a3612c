/*
 * recur's QEMU TCG plugin: counts executed guest instructions exactly and writes the
 * running count each time a marker address executes.
 *
 *   qemu-system-arm ... -plugin ./libinsn_marker.so,step=0xADDR,section=0xADDR,out=FILE[,hist=FILE2]
 *
 * Each execution of the instruction at `step` appends "M <count>" to FILE, each execution
 * of `section` appends "S <count>"; at exit "T <total>". Addresses are the functions'
 * ELF symbol values (the Thumb bit, bit 0, is cleared here). <count> includes every
 * instruction executed before the marker's first instruction.
 *
 * With `hist=FILE2`, every instruction executed between a `section` and the next `step`
 * marker is also counted by its address (below 4 MiB, the board's flash), and at exit FILE2
 * gets one "<address in hex> <count>" line per address executed there: where a step's
 * instructions go (`recur bench OUT.rcm --qemu --profile` sums them by function).
 *
 * Debian's QEMU 7.2 packages ship no qemu-plugin.h, so the handful of declarations used
 * are written out below, copied in meaning from QEMU 7.2's include/qemu/qemu-plugin.h
 * (plugin API version 1). Single vCPU guests only (mps2-an386 has one core).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU 7.2 plugin API, the parts used (include/qemu/qemu-plugin.h) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags {
    QEMU_PLUGIN_CB_NO_REGS,
    QEMU_PLUGIN_CB_R_REGS,
    QEMU_PLUGIN_CB_RW_REGS,
};
enum qemu_plugin_op {
    QEMU_PLUGIN_INLINE_ADD_U64,
};
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
/* ---- end of the API declarations ---- */

static uint64_t count;          /* instructions executed so far */
static uint64_t marker[2];      /* 0: step, 1: section; 0 = unset */
static FILE *out;
static const char tag[2] = {'M', 'S'};

#define HIST_LIMIT (4u << 20)   /* addresses counted: the flash of mps2-an386 */
static uint64_t *hist;          /* per halfword address, when hist= is given */
static FILE *hist_out;
static int in_step;             /* between a section and a step marker */

static void on_marker(unsigned int vcpu, void *which)
{
    (void)vcpu;
    fprintf(out, "%c %" PRIu64 "\n", tag[(uintptr_t)which], count);
    in_step = (uintptr_t)which == 1;
}

static void on_insn(unsigned int vcpu, void *pc)
{
    (void)vcpu;
    if (in_step) {
        hist[(uintptr_t)pc / 2]++;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        /* The snapshot runs before this instruction is counted. */
        for (uintptr_t k = 0; k < 2; k++) {
            if (marker[k] && pc == marker[k]) {
                qemu_plugin_register_vcpu_insn_exec_cb(insn, on_marker, QEMU_PLUGIN_CB_NO_REGS,
                                                       (void *)k);
            }
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &count, 1);
        if (hist && pc < HIST_LIMIT) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_insn, QEMU_PLUGIN_CB_NO_REGS,
                                                   (void *)(uintptr_t)pc);
        }
    }
}

static void on_qemu_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    fprintf(out, "T %" PRIu64 "\n", count);
    fflush(out);
    if (out != stderr) {
        fclose(out);
    }
    if (hist) {
        for (uint64_t i = 0; i < HIST_LIMIT / 2; i++) {
            if (hist[i]) {
                fprintf(hist_out, "%" PRIx64 " %" PRIu64 "\n", 2 * i, hist[i]);
            }
        }
        fclose(hist_out);
    }
}

static bool parse_addr(const char *s, uint64_t *v)
{
    char *end;
    *v = strtoull(s, &end, 0) & ~(uint64_t)1;
    return *s && !*end;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    const char *path = NULL;
    const char *hist_path = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool ok = true;
        if (!strncmp(a, "step=", 5)) {
            ok = parse_addr(a + 5, &marker[0]);
        } else if (!strncmp(a, "section=", 8)) {
            ok = parse_addr(a + 8, &marker[1]);
        } else if (!strncmp(a, "out=", 4)) {
            path = a + 4;
        } else if (!strncmp(a, "hist=", 5)) {
            hist_path = a + 5;
        } else {
            ok = false;
        }
        if (!ok) {
            fprintf(stderr, "insn_marker: bad argument '%s' (step=ADDR section=ADDR out=FILE hist=FILE)\n", a);
            return -1;
        }
    }
    out = path ? fopen(path, "w") : stderr;
    if (!out) {
        fprintf(stderr, "insn_marker: cannot write %s\n", path);
        return -1;
    }
    if (hist_path) {
        hist = calloc(HIST_LIMIT / 2, sizeof *hist);
        hist_out = fopen(hist_path, "w");
        if (!hist || !hist_out) {
            fprintf(stderr, "insn_marker: cannot write %s\n", hist_path);
            return -1;
        }
    }
    /* Line-buffered: every snapshot reaches the file even if QEMU is killed. */
    setvbuf(out, NULL, _IOLBF, 0);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    return 0;
}
