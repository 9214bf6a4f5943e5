// Identifies the process at the other end of a connected Unix socket, for the
// Workload API's caller attestation. libuv exposes none of this, so the agent
// needs this small Node-API addon:
//
// - getPeerCred(fd): pid, uid, gid from getsockopt(SO_PEERCRED), the
//   credentials the kernel recorded when the peer called connect(); and a
//   pidfd for that process: SO_PEERPIDFD (Linux >= 6.5) names the very process
//   that connected, with no window for pid reuse; pidfd_open(pid) (Linux >= 5.3)
//   is the fallback on kernels without SO_PEERPIDFD, opened at accept time. -1 when
//   the kernel has neither; -2 when SO_PEERPIDFD says the peer is already gone.
// - pidfdExited(pidfd): whether the process behind a pidfd has exited. While it
//   has not, its pid cannot name another process.
// - procOwnerIs(pid, uid, gid): whether /proc/<pid>/stat is owned by uid and
//   gid (1), by someone else (0), or is gone (-1). The caller re-check a stream
//   runs before every message: one stat(2), no Stats object, no exception.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <node_api.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "peercred: %s: %s", what, strerror(err));
  napi_throw_error(env, "ERR_PEERCRED", msg);
  return NULL;
}

static int fd_arg(napi_env env, napi_callback_info info, int32_t *fd) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, "ERR_PEERCRED", "peercred: expected a file descriptor");
    return 0;
  }
  if (napi_get_value_int32(env, argv[0], fd) != napi_ok || *fd < 0) {
    napi_throw_type_error(env, "ERR_PEERCRED", "peercred: file descriptor must be a non-negative integer");
    return 0;
  }
  return 1;
}

// A pidfd for the socket's peer: SO_PEERPIDFD first, pidfd_open(pid) next, else -1.
// -2 when the kernel has SO_PEERPIDFD but refuses it: the peer has exited and been
// reaped (Linux 6.5 to 6.15 answer EINVAL then), so its pid may already name another
// process, which pidfd_open(pid) would open instead.
static int peer_pidfd(int fd, pid_t pid) {
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0) return pidfd >= 0 ? pidfd : -2;
  if (errno != ENOPROTOOPT) return -2;
  if (pid <= 0) return -1;
  long r = syscall(SYS_pidfd_open, pid, 0);
  return r >= 0 ? (int)r : -1;
}

// getPeerCred(fd: number): { pid, uid, gid, pidfd }
static napi_value GetPeerCred(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, &fd)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return throw_errno(env, "getsockopt(SO_PEERCRED)", errno);
  int pidfd = peer_pidfd(fd, cred.pid);
  napi_value out, v;
  napi_create_object(env, &out);
  napi_create_int32(env, cred.pid, &v);
  napi_set_named_property(env, out, "pid", v);
  napi_create_uint32(env, cred.uid, &v);
  napi_set_named_property(env, out, "uid", v);
  napi_create_uint32(env, cred.gid, &v);
  napi_set_named_property(env, out, "gid", v);
  napi_create_int32(env, pidfd, &v);
  napi_set_named_property(env, out, "pidfd", v);
  return out;
}

// pidfdExited(pidfd: number): boolean. A pidfd polls readable once its process has exited.
static napi_value PidfdExited(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, &fd)) return NULL;
  struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
  int r;
  do r = poll(&p, 1, 0); while (r < 0 && errno == EINTR);
  if (r < 0) return throw_errno(env, "poll(pidfd)", errno);
  if (p.revents & POLLNVAL) return throw_errno(env, "poll(pidfd)", EBADF);
  napi_value out;
  napi_get_boolean(env, r > 0, &out);
  return out;
}

// procOwnerIs(pid: number, uid: number, gid: number): 1 | 0 | -1
// The numbers are taken as they are, never cut to 32 bits: a pid no process can
// have (0, negative, fractional, beyond pid_t) names no /proc entry (-1, as a stat
// of that path says), and an id that is no uid_t equals no owner (0).
static napi_value ProcOwnerIs(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  double pid, uid, gid;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_double(env, argv[0], &pid) != napi_ok || napi_get_value_double(env, argv[1], &uid) != napi_ok ||
      napi_get_value_double(env, argv[2], &gid) != napi_ok) {
    napi_throw_type_error(env, "ERR_PEERCRED", "peercred: procOwnerIs(pid, uid, gid) expects three numbers");
    return NULL;
  }
  int r = -1;
  if (pid >= 1 && pid <= INT32_MAX && pid == (double)(int32_t)pid) {
    char path[48];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    struct stat st;
    if (stat(path, &st) == 0) r = ((double)st.st_uid == uid && (double)st.st_gid == gid) ? 1 : 0;
  }
  napi_value out;
  napi_create_int32(env, r, &out);
  return out;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "getPeerCred", NAPI_AUTO_LENGTH, GetPeerCred, NULL, &fn);
  napi_set_named_property(env, exports, "getPeerCred", fn);
  napi_create_function(env, "pidfdExited", NAPI_AUTO_LENGTH, PidfdExited, NULL, &fn);
  napi_set_named_property(env, exports, "pidfdExited", fn);
  napi_create_function(env, "procOwnerIs", NAPI_AUTO_LENGTH, ProcOwnerIs, NULL, &fn);
  napi_set_named_property(env, exports, "procOwnerIs", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
