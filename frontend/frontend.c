/*
 * frontend.c: the small front end of vdelivermail and vchkpw (built twice by
 * packaging/install, -DVPS_PROGRAM=1 for vdelivermail, 2 for vchkpw). It hands the run to
 * the resident vpopmail-server over a Unix socket and exits with the server's answer, or
 * (vchkpw) carries out the exec plan the server answered with. When the server cannot take
 * the run it execs the pure-Python program VPS_FALLBACK with the same argv, environment and
 * descriptors: a stopped server changes nothing but speed.
 *
 * It connects first to the socket of its own identity (VPS_SOCKET.HASH, see identity_path),
 * where the server's workers holding that identity accept it themselves, then to VPS_SOCKET.
 *
 * VPS_SOCKET and VPS_FALLBACK are absolute, or relative to the installation: the directory
 * above the one this program is in (/proc/self/exe, else an absolute argv[0]), so one build
 * serves every installation with the same server uid.
 *
 * Protocol version 2 (vpopmail/wire.py holds the same text). Integers are unsigned 32-bit
 * (nice signed, resource limits 64-bit) in host byte order: both ends run on the same machine.
 *
 *   request  = "VPSq" version:u8 program:u8 nfds:u8 0:u8 length:u32   (12 bytes; the nfds
 *              descriptors 0,1,2 (and 3 for vchkpw) ride on it as SCM_RIGHTS)
 *              then `length` bytes: umask argc envc nice:i32, then the 16 resource limits
 *              of Linux by number (RLIMIT_CPU 0 .. RLIMIT_RTTIME 15) as cur:u64 max:u64,
 *              then NUL-terminated strings: cwd, argc arguments, envc "NAME=value" entries.
 *              Bounds: argc <= 1024, argument bytes <= 128 KiB, environment bytes <= 64 KiB,
 *              envc <= 4096, length <= 256 KiB.
 *   reply    = "VPSr" version:u8 kind:u8 0:u16 length:u32 then `length` (<= 256 KiB) bytes:
 *      kind 1 EXIT     code:u32 (0..255)
 *      kind 2 PLAN     change:u32 uid gid ngroups(<=256) argc envc, ngroups gids, then
 *                      NUL-terminated strings: path, cwd ("" = stay), argc args, envc env
 *      kind 3 DECLINE  (nothing read or run: a busy, foreign-version or unable server)
 *      kind 4 STATUS   text (vpopmail-server --status only)
 *
 * Outcomes here: no socket, a refused connection, a connection not taken within
 * VPS_REPLY_TIMEOUT seconds (a full queue), an oversized request, or DECLINE / another
 * version -> exec the fallback. A server socket owned by anyone but VPS_SERVER_UID, a
 * truncated, oversized or malformed reply, or a plan that is refused -> exit 111. The
 * server closing before any reply byte (it died) -> the fallback after rewinding the input
 * (fd 0 for vdelivermail, 3 for vchkpw) when it is seekable, else 111: a pipe partly read
 * by the dead server cannot be read again. No reply within VPS_REPLY_TIMEOUT seconds
 * (server.reply_timeout; 0 waits for ever) -> 111: the run may still finish in the server,
 * so it is not run again here (qmail retries later: at worst a duplicate, never a loss).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <link.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

/* How packaging/install tells its own front end from C vpopmail's program of the same name
 * (an upgrade keeps it in place, --rollback removes it), and vcheck the socket it was built
 * for (vpopmail/wire.py: front_end_socket). */
const char vps_ident[] = "pyvpopmail front end, protocol 2, socket " VPS_SOCKET;

#ifndef VPS_PROGRAM
#error "VPS_PROGRAM (1 vdelivermail, 2 vchkpw) must be defined"
#endif
#ifndef VPS_SOCKET
#error "VPS_SOCKET must be defined"
#endif
#ifndef VPS_FALLBACK
#error "VPS_FALLBACK must be defined"
#endif
#ifndef VPS_SERVER_UID
#define VPS_SERVER_UID 0
#endif
#ifndef VPS_ALLOW_ROOT
#define VPS_ALLOW_ROOT 0
#endif
#ifndef VPS_REPLY_TIMEOUT
#define VPS_REPLY_TIMEOUT 600
#endif

#define VERSION 2
#define LIMITS 16 /* Linux's resource limits, RLIMIT_CPU (0) .. RLIMIT_RTTIME (15) */
#define BODY (16 + LIMITS * 16)
#define MAX_ARGS 1024
#define MAX_ARG_BYTES (128 * 1024)
#define MAX_ENV 4096
#define MAX_ENV_BYTES (64 * 1024)
#define MAX_MESSAGE (256 * 1024)
#define MAX_GROUPS 256
#define HEADER 12
#define KIND_EXIT 1
#define KIND_PLAN 2
#define KIND_DECLINE 3

#if VPS_PROGRAM == 1
#define NAME "vdelivermail"
#define NFDS 3
#define INPUT_FD 0
#define OUT_FD 1 /* qmail-local logs what vdelivermail prints on stdout */
#else
#define NAME "vchkpw"
#define NFDS 4
#define INPUT_FD 3
#define OUT_FD 2
#endif

#if defined(__GNUC__)
#define NORETURN __attribute__((noreturn))
#else
#define NORETURN
#endif

extern char **environ;
static char **saved_argv;
static char socket_path[PATH_MAX], fallback_path[PATH_MAX];

static void say(const char *text)
{
    size_t left = strlen(text);
    while (left > 0) {
        ssize_t n = write(OUT_FD, text, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        text += n;
        left -= (size_t)n;
    }
}

static NORETURN void temporary(const char *why)
{
    say(NAME ": deferred: ");
    say(why);
    say("\n");
    _exit(111);
}

static NORETURN void fallback(void)
{
    execv(fallback_path, saved_argv);
    temporary("cannot run its Python program " VPS_FALLBACK);
}

/* `path` under the installation `prefix` (unless absolute); 0 if it does not fit. */
static int place(char *out, const char *prefix, const char *path)
{
    int n = path[0] == '/' ? snprintf(out, PATH_MAX, "%s", path)
                           : snprintf(out, PATH_MAX, "%s/%s", prefix, path);
    return n > 0 && n < PATH_MAX;
}

static void find_paths(void)
{
    char prefix[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", prefix, sizeof prefix - 1);
    if (n > 0) {
        prefix[n] = '\0';
    } else if (saved_argv[0] != NULL && saved_argv[0][0] == '/'
               && strlen(saved_argv[0]) < sizeof prefix) {
        strcpy(prefix, saved_argv[0]);
    } else {
        temporary("cannot find its installation (no /proc/self/exe)");
    }
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(prefix, '/');
        if (slash == NULL)
            temporary("cannot find its installation");
        *slash = '\0';
    }
    if (!place(socket_path, prefix, VPS_SOCKET) || !place(fallback_path, prefix, VPS_FALLBACK))
        temporary("installation path too long");
}

/* The server died after taking the request: run again directly if the input can be. */
static NORETURN void after_server_death(void)
{
    if (lseek(INPUT_FD, 0, SEEK_SET) == 0)
        fallback();
    temporary("vpopmail-server ended before answering");
}

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

static uint32_t get32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int send_all(int fd, const unsigned char *data, size_t length)
{
    while (length > 0) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

/* 1 all read, 0 end of stream or error before any byte, -1 a partial read; nothing more
 * within the reply timeout (SO_RCVTIMEO) is a temporary failure */
static int recv_all(int fd, unsigned char *data, size_t length)
{
    size_t got = 0;
    while (got < length) {
        ssize_t n = recv(fd, data + got, length - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            temporary("no reply from vpopmail-server in time (server.reply_timeout)");
        if (n <= 0)
            return got == 0 ? 0 : -1;
        got += (size_t)n;
    }
    return 1;
}

/* A resource limit as the protocol carries it: RLIM_INFINITY is 2^64 - 1 whatever the
 * width of rlim_t (a 32-bit one's is 2^32 - 1). */
static uint64_t wire_limit(rlim_t value)
{
    return value == RLIM_INFINITY ? UINT64_MAX : (uint64_t)value;
}

/* The request body; NULL (fallback) when it would exceed the protocol's bounds. */
static unsigned char *build_body(int argc, size_t *length)
{
    char cwd[PATH_MAX];
    size_t size = BODY, argbytes = 0, envbytes = 0;
    uint32_t envc = 0;
    if (argc < 0 || argc > MAX_ARGS || getcwd(cwd, sizeof cwd) == NULL)
        return NULL;
    size += strlen(cwd) + 1;
    for (int i = 0; i < argc; i++)
        argbytes += strlen(saved_argv[i]) + 1;
    for (char **e = environ; *e != NULL; e++, envc++)
        envbytes += strlen(*e) + 1;
    if (argbytes > MAX_ARG_BYTES || envbytes > MAX_ENV_BYTES || envc > MAX_ENV)
        return NULL;
    size += argbytes + envbytes;
    unsigned char *body = malloc(size);
    if (body == NULL)
        return NULL;
    mode_t mask = umask(0);
    umask(mask);
    errno = 0;
    int32_t niceness = (int32_t)getpriority(PRIO_PROCESS, 0);
    if (errno != 0) {
        free(body);
        return NULL;
    }
    put32(body, (uint32_t)mask);
    put32(body + 4, (uint32_t)argc);
    put32(body + 8, envc);
    memcpy(body + 12, &niceness, 4);
    for (int resource = 0; resource < LIMITS; resource++) {
        struct rlimit limit;
        if (getrlimit(resource, &limit) != 0) {
            free(body);
            return NULL;
        }
        uint64_t pair[2] = {wire_limit(limit.rlim_cur), wire_limit(limit.rlim_max)};
        memcpy(body + 16 + resource * 16, pair, 16);
    }
    unsigned char *p = body + BODY;
    size_t n = strlen(cwd) + 1;
    memcpy(p, cwd, n);
    p += n;
    for (int i = 0; i < argc; i++) {
        n = strlen(saved_argv[i]) + 1;
        memcpy(p, saved_argv[i], n);
        p += n;
    }
    for (char **e = environ; *e != NULL; e++) {
        n = strlen(*e) + 1;
        memcpy(p, *e, n);
        p += n;
    }
    *length = size;
    return body;
}

/* Connect to the server at `path`; -1 if there is none to talk to there. A queue that is
 * full is waited on VPS_REPLY_TIMEOUT seconds at most if `patient`, else not at all; then
 * *full is set. */
static int connect_to(const char *path, int patient, int *full)
{
    struct sockaddr_un addr;
    size_t size = strlen(path) + 1;
    if (size > sizeof addr.sun_path)
        return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, size);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (patient ? 0 : SOCK_NONBLOCK), 0);
    if (fd < 0)
        return -1;
    /* a connect to a queue that is full waits at most this long (the send timeout bounds
       it), then the next socket or the program itself: nothing was sent */
    struct timeval wait = {VPS_REPLY_TIMEOUT, 0};
    if (VPS_REPLY_TIMEOUT > 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EAGAIN)
            *full = 1;
        close(fd);
        return -1;
    }
    if (!patient) { /* blocking again for the request and the reply */
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
            close(fd);
            return -1;
        }
    }
    struct ucred peer;
    socklen_t len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || len != sizeof peer) {
        close(fd);
        return -1;
    }
    if (peer.uid != (uid_t)VPS_SERVER_UID) {
        close(fd);
        temporary("the server socket is not the vpopmail-server's (wrong owner)");
    }
    return fd;
}

/* The socket where the server's workers holding this process's identity (effective ids and
 * supplementary groups, as the kernel reports them to the server) accept it themselves:
 * VPS_SOCKET.HASH, HASH the 64-bit FNV-1a of uid, gid and the sorted groups as 32-bit
 * host-order values, in hex (vpopmail/wire.py identity_socket names it the same way);
 * 0 if there is none. */
static int identity_path(char *out, size_t size)
{
    gid_t groups[MAX_GROUPS];
    int n = getgroups(MAX_GROUPS, groups);
    if (n < 0)
        return 0;
    for (int i = 1; i < n; i++) /* insertion sort: a handful of groups */
        for (int j = i; j > 0 && groups[j - 1] > groups[j]; j--) {
            gid_t swap = groups[j];
            groups[j] = groups[j - 1];
            groups[j - 1] = swap;
        }
    uint32_t values[MAX_GROUPS + 2];
    values[0] = (uint32_t)geteuid();
    values[1] = (uint32_t)getegid();
    for (int i = 0; i < n; i++)
        values[i + 2] = (uint32_t)groups[i];
    const unsigned char *bytes = (const unsigned char *)values;
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < ((size_t)n + 2) * 4; i++)
        hash = (hash ^ bytes[i]) * 0x100000001b3ULL;
    int length = snprintf(out, size, "%s.%016llx", socket_path, (unsigned long long)hash);
    return length > 0 && (size_t)length < size;
}

/* Connect to the server, at this identity's own socket if it has one; -1 (fallback) if
 * there is none to talk to. After waiting on a full queue there, the server's socket is
 * tried without waiting: one VPS_REPLY_TIMEOUT in all. */
static int connect_server(void)
{
    char own[sizeof ((struct sockaddr_un *)0)->sun_path];
    int full = 0;
    int fd = identity_path(own, sizeof own) ? connect_to(own, 1, &full) : -1;
    return fd >= 0 ? fd : connect_to(socket_path, !full, &full);
}

/* The header with the descriptors and the body in one sendmsg (the worker then reads both
   with one recvmsg), the rest of a short send after it. */
static int send_request(int sock, unsigned char *body, size_t length)
{
    unsigned char header[HEADER] = {'V', 'P', 'S', 'q', VERSION, VPS_PROGRAM, NFDS, 0};
    put32(header + 8, (uint32_t)length);
    int fds[NFDS];
    for (int i = 0; i < NFDS; i++)
        fds[i] = i;
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov[2] = {{header, HEADER}, {body, length}};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent <= 0)
        return -1;
    size_t done = (size_t)sent;
    if (done < HEADER)
        return send_all(sock, header + done, HEADER - done) == 0
               && send_all(sock, body, length) == 0 ? 0 : -1;
    return send_all(sock, body + (done - HEADER), length - (done - HEADER));
}

#if VPS_PROGRAM == 2
/* The next NUL-terminated string of a reply, or NULL past its end. */
static char *next_string(unsigned char **p, const unsigned char *end)
{
    unsigned char *nul = *p < end ? memchr(*p, 0, (size_t)(end - *p)) : NULL;
    if (nul == NULL)
        return NULL;
    char *s = (char *)*p;
    *p = nul + 1;
    return s;
}

static NORETURN void carry_out(unsigned char *data, uint32_t length)
{
    if (length < 24)
        temporary("truncated exec plan");
    uint32_t change = get32(data), uid = get32(data + 4), gid = get32(data + 8);
    uint32_t ngroups = get32(data + 12), argc = get32(data + 16), envc = get32(data + 20);
    if (ngroups > MAX_GROUPS || argc < 1 || argc > MAX_ARGS || envc > MAX_ENV
        || 24 + (size_t)ngroups * 4 > length)
        temporary("malformed exec plan");
    const unsigned char *end = data + length;
    unsigned char *p = data + 24 + (size_t)ngroups * 4;
    char *path = next_string(&p, end), *cwd = next_string(&p, end);
    char **args = calloc((size_t)argc + 1, sizeof *args);
    char **env = calloc((size_t)envc + 1, sizeof *env);
    if (args == NULL || env == NULL)
        temporary("out of memory");
    for (uint32_t i = 0; i < argc; i++)
        args[i] = next_string(&p, end);
    for (uint32_t i = 0; i < envc; i++)
        env[i] = next_string(&p, end);
    if (path == NULL || cwd == NULL || (argc > 0 && args[argc - 1] == NULL)
        || (envc > 0 && env[envc - 1] == NULL) || p != end)
        temporary("malformed exec plan");
    if (change) {
        gid_t groups[MAX_GROUPS];
        for (uint32_t i = 0; i < ngroups; i++)
            groups[i] = (gid_t)get32(data + 24 + 4 * (size_t)i);
        if (uid == 0 && !VPS_ALLOW_ROOT)
            temporary("exec plan for uid 0 refused (server.root_logins is off)");
        if (setgroups(ngroups, groups) != 0 || setgid((gid_t)gid) != 0
            || setuid((uid_t)uid) != 0 || getuid() != (uid_t)uid || geteuid() != (uid_t)uid)
            temporary("cannot take the ids of the exec plan");
    }
    if (cwd[0] != '\0' && chdir(cwd) != 0)
        temporary("cannot enter the directory of the exec plan");
    signal(SIGPIPE, SIG_DFL);
    signal(SIGXFSZ, SIG_DFL);
    execve(path, args, env);
    temporary("cannot run the program of the exec plan");
}
#endif

#ifndef __GLIBC__
/* musl's rcrt1.o, which starts a static position-independent program (packaging/install
 * links the front ends so with musl-gcc), relocates it but leaves its RELRO segment (the GOT,
 * .data.rel.ro) writable, where glibc's start, like any dynamic loader, makes it read-only:
 * done here, whole pages as glibc does, before anything from outside is read. The program
 * itself is the first object dl_iterate_phdr reports. */
static int protect_relro(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_GNU_RELRO)
            continue;
        uintptr_t start = (info->dlpi_addr + ph->p_vaddr) & ~(page - 1);
        uintptr_t end = (info->dlpi_addr + ph->p_vaddr + ph->p_memsz) & ~(page - 1);
        if (end > start)
            (void)mprotect((void *)start, end - start, PROT_READ);
    }
    return 1;
}
#endif

int main(int argc, char **argv)
{
#ifndef __GLIBC__
    (void)dl_iterate_phdr(protect_relro, NULL);
#endif
    saved_argv = argv;
    find_paths();
    for (int fd = 0; fd < NFDS; fd++)
        if (fcntl(fd, F_GETFD) < 0)
            fallback(); /* the program itself says what is missing */
    size_t length = 0;
    unsigned char *body = build_body(argc, &length);
    if (body == NULL)
        fallback(); /* over the protocol's bounds: the program itself copes */
    int sock = connect_server();
    if (sock < 0 || send_request(sock, body, length) != 0)
        fallback();
    free(body);
    struct timeval wait = {VPS_REPLY_TIMEOUT, 0};
    if (VPS_REPLY_TIMEOUT > 0
        && setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait) != 0)
        temporary("cannot set the reply timeout");
    unsigned char header[HEADER];
    int got = recv_all(sock, header, HEADER);
    if (got == 0)
        after_server_death();
    if (got < 0 || memcmp(header, "VPSr", 4) != 0)
        temporary("garbled reply from vpopmail-server");
    if (header[4] != VERSION)
        fallback(); /* another version: by the protocol it has run nothing */
    length = get32(header + 8);
    if (length > MAX_MESSAGE)
        temporary("oversized reply from vpopmail-server");
    unsigned char *data = malloc(length + 1);
    if (data == NULL)
        temporary("out of memory");
    if (length > 0 && recv_all(sock, data, length) != 1)
        temporary("truncated reply from vpopmail-server");
    switch (header[5]) {
    case KIND_EXIT:
        if (length != 4 || get32(data) > 255)
            temporary("malformed exit status from vpopmail-server");
        _exit((int)get32(data));
    case KIND_DECLINE:
        close(sock);
        free(data);
        fallback();
#if VPS_PROGRAM == 2
    case KIND_PLAN:
        close(sock);
        close(3); /* the credentials were read; the program must not inherit them */
        carry_out(data, (uint32_t)length);
#endif
    default:
        temporary("unexpected reply from vpopmail-server");
    }
}
