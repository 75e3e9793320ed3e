/*
 * pycontain's thin client of the warm CLI server (pycontain/cli/server.py).
 *
 * Why C: the Python client in bin/pycontain costs ~17 ms before it can say
 * anything to the server (`python3 -I -S -c pass` alone, here), about half a
 * `pycontain run`. This program does the same job in ~1 ms: connect to the
 * server's unix socket, hand over argv, environment, cwd, umask and the stdio
 * fds, forward signals, exit with the worker's status. It speaks exactly the
 * frames of the Python client (`via_server` in bin/pycontain; the protocol is
 * in server.py's docstring) and does nothing else: whenever it cannot be sure
 * the server took the command, it execs the Python launcher, which then does
 * what it always did (retry the server, or run in-process and start one).
 *
 * Usage (bin/pycontain's shell line runs it; nobody else should):
 *     client PYTHON LAUNCHER ARGS...     run `pycontain ARGS...`
 *     client --print-socket PYTHON LAUNCHER
 *                                        print the server socket's path (tests)
 *
 * Built by the CLI server (server.py, build_client) with -DPYCONTAIN_PROTOCOL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PYCONTAIN_PROTOCOL
#error "build with -DPYCONTAIN_PROTOCOL='\"N\"' (pycontain/cli/server.py does)"
#endif

#define HEADER 9               /* kind byte + 8 hex digits of payload length */
#define MAX_FRAME (16 << 20)   /* server.py's MAX_FRAME: it refuses more */
#define MAX_REPLY 65536        /* an X or N frame is a few bytes; more is not a server */

extern char **environ;

/* The signals the Python client forwards, in the same order. */
static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH};
#define NFORWARDED (sizeof forwarded / sizeof forwarded[0])

static char **fallback_argv;   /* PYTHON -I -S LAUNCHER ARGS... NULL */
static sigset_t saved_mask;    /* the mask we were started with */
static int mask_changed;

/*
 * Run the command as if this program did not exist: exec the Python launcher
 * (as the shell line would have). Only while nothing can have run yet, i.e.
 * before the R frame was sent whole, or on an N refusal (the server's word
 * that nothing ran). Signals we blocked are unblocked first: one that came
 * meanwhile then acts as it would have without us (it kills us; nothing ran).
 */
static void __attribute__((noreturn)) fallback(void)
{
    if (mask_changed)
        sigprocmask(SIG_SETMASK, &saved_mask, NULL);
    execvp(fallback_argv[0], fallback_argv);
    dprintf(2, "pycontain: cannot run %s: %s\n", fallback_argv[0], strerror(errno));
    _exit(127);
}

/* -- the socket's name: server.py socket_name(), bin/pycontain cli_server_socket() -- */

/* FNV-1a, 64 bits, as server.py's fnv1a64 (it names a socket; the 0700
 * directory and the peer uid check are the security boundary). */
static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    while (n--) {
        h ^= *p++;
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Python's bytes.strip() (ASCII whitespace) then lower(), compared with `word`. */
static int is_word(const char *s, const char *word)
{
    const char *ws = " \t\n\r\v\f";
    while (*s && strchr(ws, *s))
        s++;
    size_t n = strlen(s);
    while (n && strchr(ws, s[n - 1]))
        n--;
    if (n != strlen(word))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != word[i])
            return 0;
    }
    return 1;
}

/* The socket directory, as cli_server_dir() in bin/pycontain; NULL when off. */
static const char *socket_dir(char *buf, size_t size)
{
    const char *on = getenv("PYCONTAIN_CLI_SERVER");
    if (on && (is_word(on, "0") || is_word(on, "no") || is_word(on, "false") || is_word(on, "off")))
        return NULL;
    const char *d = getenv("PYCONTAIN_CLI_SERVER_DIR");
    if (d && *d)
        return d;
    if (geteuid() == 0)
        return "/run/pycontain/cli";
    const char *x = getenv("XDG_RUNTIME_DIR");
    if (!x || !*x)
        return NULL;
    if ((size_t)snprintf(buf, size, "%s/pycontain/cli", x) >= size)
        return NULL;
    return buf;
}

/*
 * posixpath.normpath(): "." and empty components go, ".." takes the one
 * before it (kept at the start of a relative path, dropped at the root), and
 * a path starting with exactly two slashes keeps them (POSIX leaves "//"
 * to the implementation). Returns 0, or -1 when it does not fit.
 */
static int normpath(const char *path, char *out, size_t size)
{
    const char *comp[1024];
    size_t len[1024], n = 0, slashes = strspn(path, "/");
    for (const char *p = path; *p;) {
        const char *end = strchrnul(p, '/');
        size_t l = (size_t)(end - p);
        if (l == 2 && p[0] == '.' && p[1] == '.') {
            if (n && !(len[n - 1] == 2 && comp[n - 1][0] == '.' && comp[n - 1][1] == '.'))
                n--;
            else if (!slashes) {
                if (n == 1024)
                    return -1;
                comp[n] = p;
                len[n++] = l;
            }
        } else if (l && !(l == 1 && p[0] == '.')) {
            if (n == 1024)
                return -1;
            comp[n] = p;
            len[n++] = l;
        }
        p = *end ? end + 1 : end;
    }
    size_t o = 0;
    const char *prefix = slashes == 0 ? "" : slashes == 2 ? "//" : "/";
    if (strlen(prefix) + 1 > size)
        return -1;
    strcpy(out, prefix);
    o = strlen(prefix);
    for (size_t i = 0; i < n; i++) {
        if (o + len[i] + 2 > size)
            return -1;
        if (i)
            out[o++] = '/';
        memcpy(out + o, comp[i], len[i]);
        o += len[i];
    }
    if (o == 0) {
        if (size < 2)
            return -1;
        out[o++] = '.';
    }
    out[o] = '\0';
    return 0;
}

/*
 * What sys.executable will be in `python` started as the shell line starts
 * it (a path with a slash, or a bare name found on PATH), as CPython 3.11's
 * start-up (getpath) makes it: an absolute path normalized; a relative one
 * normalized then put after the cwd as is (from "/": "//usr/..."); a bare
 * name as the first match on PATH, normalized. Returns 0, or -1 when unsure
 * (a relative PATH entry, no match): then the caller falls back on the
 * Python launcher, which knows for sure. A wrong guess costs only speed: a
 * socket of that name does not exist (tests/unit/test_cli_client.py checks
 * the usual spellings against the interpreter itself).
 */
static int python_executable(const char *python, char *out, size_t size)
{
    char buf[4096];
    if (python[0] == '/')
        return normpath(python, out, size);
    if (strchr(python, '/')) {
        if (!getcwd(out, size) || out[0] != '/')  /* "(unreachable)/...": a cwd outside our root */
            return -1;
        size_t n = strlen(out);
        if (n + 1 >= size || normpath(python, buf, sizeof buf) < 0)
            return -1;
        out[n++] = '/';
        out[n] = '\0';
        if (n + strlen(buf) >= size)
            return -1;
        strcpy(out + n, buf);
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path || !*python)
        return -1;
    while (1) {
        const char *end = strchrnul(path, ':');
        size_t len = (size_t)(end - path);
        if (len == 0 || path[0] != '/')
            return -1;  /* a relative entry: Python's own search may differ */
        if (len + 1 + strlen(python) >= sizeof buf)
            return -1;
        memcpy(buf, path, len);
        buf[len] = '/';
        strcpy(buf + len + 1, python);
        struct stat st;
        if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0)
            return normpath(buf, out, size);
        if (!*end)
            return -1;
        path = end + 1;
    }
}

/* The server's socket path for this launcher and interpreter, into `out`; -1 if none. */
static int socket_path(const char *python, const char *launcher, char *out, size_t size)
{
    char dirbuf[4096], exe[4096], key[8192];
    const char *dir = socket_dir(dirbuf, sizeof dirbuf);
    if (!dir || python_executable(python, exe, sizeof exe) < 0)
        return -1;
    struct stat st;
    if (stat(launcher, &st) < 0)
        return -1;
    /* "protocol\0executable\0st_dev\0st_ino\0st_mtime_ns", as Python formats the numbers. */
    long long mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    int n = snprintf(key, sizeof key, "%s%c%s%c%llu%c%llu%c%lld", PYCONTAIN_PROTOCOL, 0, exe, 0,
                     (unsigned long long)st.st_dev, 0, (unsigned long long)st.st_ino, 0, mtime_ns);
    if (n < 0 || (size_t)n >= sizeof key)
        return -1;
    n = snprintf(out, size, "%s/cli-%016llx.sock", dir,
                 (unsigned long long)fnv1a64((const unsigned char *)key, (size_t)n));
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* -- talking to the server -- */

/* Write all of buf; -1 on error. MSG_NOSIGNAL: a server gone away is an
 * error to handle here, not a SIGPIPE that kills us. */
static int send_all(int s, const char *buf, size_t n)
{
    while (n) {
        ssize_t w = send(s, buf, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Decimal text of v into p; returns the length. */
static size_t put_int(char *p, long v)
{
    return (size_t)sprintf(p, "%ld", v);
}

/*
 * Whether environ entry `e` is to be sent: it has a non-empty KEY before its
 * "=", and no earlier entry has the same KEY (Python's posix.environ keeps
 * the first, as getenv() does; the server keeps whatever it is sent).
 */
static int env_entry_sent(char **e)
{
    const char *eq = strchr(*e, '=');
    if (!eq || eq == *e)
        return 0;
    size_t klen = (size_t)(eq - *e) + 1;  /* with the "=" */
    for (char **p = environ; p != e; p++)
        if (strncmp(*p, *e, klen) == 0)
            return 0;
    return 1;
}

/*
 * The R frame: "R" + 8 hex digits + payload. Payload: NUL-separated pid,
 * umask, which stdio fds follow ("012"), argc, the arguments, KEY=VALUE
 * entries. NULL when it would be over the server's limit.
 */
static char *run_frame(int argc, char **argv, mode_t mask, const char *stdio, size_t *len)
{
    size_t n = 64 + strlen(stdio);
    for (int i = 0; i < argc; i++)
        n += strlen(argv[i]) + 1;
    for (char **e = environ; *e; e++)
        n += strlen(*e) + 1;
    if (n > MAX_FRAME)
        return NULL;
    char *buf = malloc(HEADER + n + 1);
    if (!buf)
        return NULL;
    char *p = buf + HEADER;
    p += put_int(p, (long)getpid());
    *p++ = '\0';
    p += put_int(p, (long)mask);
    *p++ = '\0';
    p += sprintf(p, "%s", stdio);
    *p++ = '\0';
    p += put_int(p, (long)argc);
    for (int i = 0; i < argc; i++) {
        *p++ = '\0';
        size_t l = strlen(argv[i]);
        memcpy(p, argv[i], l);
        p += l;
    }
    for (char **e = environ; *e; e++) {
        if (!env_entry_sent(e))
            continue;
        *p++ = '\0';
        size_t l = strlen(*e);
        memcpy(p, *e, l);
        p += l;
    }
    size_t payload = (size_t)(p - buf - HEADER);
    char head[HEADER + 1];
    snprintf(head, sizeof head, "R%08zx", payload);
    memcpy(buf, head, HEADER);
    *len = HEADER + payload;
    return buf;
}

/* The first `n` bytes of `s` as a strict decimal int (an optional "-"); -1 if not one. */
static int parse_code(const char *s, size_t n, long *out)
{
    size_t i = 0;
    int neg = 0;
    if (n && s[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n || n - i > 9)
        return -1;
    long v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

static int hex_length(const char *s, size_t *out)
{
    size_t v = 0;
    for (int i = 0; i < 8; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (size_t)d;
    }
    *out = v;
    return 0;
}

static void __attribute__((noreturn)) lost(void)
{
    static const char msg[] =
        "pycontain: lost the CLI server mid-command (PYCONTAIN_CLI_SERVER=0 runs without it)\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(1);
}

/* Exit as the worker did: with its code, or killed by its signal (-N). */
static void __attribute__((noreturn)) exit_like(long code)
{
    if (code >= 0)
        _exit((int)(code & 0xff));
    int sig = (int)-code;
    if (sig > 0 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP) {
        signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        kill(getpid(), sig);  /* pending while blocked: delivered on unblocking */
        sigprocmask(SIG_UNBLOCK, &one, NULL);
    } else if (sig == SIGKILL) {
        kill(getpid(), SIGKILL);
    }
    _exit(128 + sig);  /* a signal whose default is not to die (SIGWINCH) */
}

int main(int argc, char **argv)
{
    int print_only = argc >= 2 && strcmp(argv[1], "--print-socket") == 0;
    if (print_only) {
        argv++;
        argc--;
    }
    if (argc < 3) {
        dprintf(2, "usage: %s [--print-socket] PYTHON LAUNCHER [ARGS...] (bin/pycontain runs it)\n", argv[0]);
        return 2;
    }
    const char *python = argv[1], *launcher = argv[2];
    int nargs = argc - 3;
    char **args = argv + 3;

    char path[4096];
    if (print_only) {
        if (socket_path(python, launcher, path, sizeof path) < 0)
            return 1;
        printf("%s\n", path);
        return 0;
    }

    fallback_argv = calloc((size_t)nargs + 5, sizeof *fallback_argv);
    if (!fallback_argv) {
        dprintf(2, "pycontain: out of memory\n");
        return 127;
    }
    fallback_argv[0] = argv[1];
    fallback_argv[1] = "-I";
    fallback_argv[2] = "-S";
    fallback_argv[3] = argv[2];
    memcpy(fallback_argv + 4, args, (size_t)nargs * sizeof *args);

    /* Which stdio fds we have: looked at before this program opens any fd,
     * which would take the lowest free number (a closed stdin's 0). */
    char stdio[4] = "";
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            stdio[strlen(stdio)] = (char)('0' + fd);

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (socket_path(python, launcher, path, sizeof path) < 0 || strlen(path) >= sizeof addr.sun_path)
        fallback();
    strcpy(addr.sun_path, path);

    /* No socket file, or nobody listening: no server. */
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
        fallback();

    /* Only a server of our own uid may have our fds and environment. */
    struct ucred cred;
    socklen_t credlen = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) < 0 || cred.uid != geteuid())
        fallback();

    /* cwd as an O_PATH fd (the worker fchdir()s to it: works where a path
     * would not, e.g. a directory since renamed), then the stdio fds we have. */
    int fds[4], nfds = 0;
    fds[nfds++] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fds[0] < 0)
        fallback();
    for (const char *c = stdio; *c; c++)
        fds[nfds++] = *c - '0';
    mode_t mask = umask(022);
    umask(mask);

    size_t len;
    char *frame = run_frame(nargs, args, mask, stdio, &len);
    if (!frame)
        fallback();

    /*
     * From the moment the R frame is out, a signal to us must reach the
     * worker, so the forwarded signals are blocked before sending and read
     * from a signalfd after (no handler, nothing async-signal-unsafe; none
     * gets lost in between). Not those the caller ignored or blocked: a
     * `nohup`'s SIGHUP, a background job's SIGINT stay away from the command,
     * as they would from an in-process run.
     */
    sigset_t fwd;
    sigemptyset(&fwd);
    sigprocmask(SIG_BLOCK, NULL, &saved_mask);
    for (size_t i = 0; i < NFORWARDED; i++) {
        struct sigaction sa;
        if (sigismember(&saved_mask, forwarded[i]) == 1)
            continue;
        if (sigaction(forwarded[i], NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
            continue;
        sigaddset(&fwd, forwarded[i]);
    }
    if (sigprocmask(SIG_BLOCK, &fwd, NULL) < 0)
        fallback();
    mask_changed = 1;
    int sfd = signalfd(-1, &fwd, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        fallback();

    /* The frame's first bytes carry the fds; the rest follows plainly. A
     * failure before the last byte is out: the server drops a half request
     * (nothing ran), so the Python launcher may have a go. */
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {.iov_base = frame, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = CMSG_SPACE(nfds * sizeof(int))};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
    ssize_t sent;
    do
        sent = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0 || send_all(s, frame + sent, len - (size_t)sent) < 0)
        fallback();
    close(fds[0]);
    free(frame);

    /* Wait for the first frame back (the connection's end of file comes only
     * once the worker is gone), forwarding signals meanwhile. */
    char reply[MAX_REPLY];
    size_t got = 0, want = HEADER;
    struct pollfd pfd[2] = {{.fd = s, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    while (got < want) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            lost();
        }
        if (pfd[1].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                char k[32], num[16];
                int nl = snprintf(num, sizeof num, "%u", si.ssi_signo);
                int kl = snprintf(k, sizeof k, "K%08x%s", nl, num);
                send_all(s, k, (size_t)kl);  /* a server gone: the read below says so */
            }
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(s, reply + got, want - got, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                lost();
            got += (size_t)r;
            if (got == HEADER && want == HEADER) {
                size_t n;
                if (hex_length(reply + 1, &n) < 0 || n > MAX_REPLY - HEADER)
                    lost();
                want = HEADER + n;
            }
        }
    }
    long code;
    if (reply[0] == 'N')  /* refused before anything ran: the Python launcher decides */
        fallback();
    if (reply[0] != 'X' || parse_code(reply + HEADER, got - HEADER, &code) < 0)
        lost();
    exit_like(code);
}
