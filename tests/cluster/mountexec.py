"""Container entry inside a private mount namespace: bind-mount the volumes, then exec the command.

Run as `unshare --mount --propagation private -- python -I mountexec.py SPEC.json`; the
spec holds mounts, working dir, argv and environment. Only the standard library is used.
A failure before the exec is written to the spec's `start_error_file` and exits 128,
which the node reports as the container's StartError.
"""

import ctypes
import json
import os
import sys

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source, target, flags):
    source_arg = source.encode() if source else None
    if _libc.mount(source_arg, target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source or ''} on {target}: {os.strerror(errno)}")


def _ensure_target(target, is_file):
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if is_file:
        open(target, "a").close()
    else:
        os.mkdir(target)


def _bind(mount):
    _ensure_target(mount["target"], mount["is_file"])
    _mount(mount["source"], mount["target"], MS_BIND | MS_REC)
    if mount["read_only"]:
        _mount(None, mount["target"], MS_REMOUNT | MS_BIND | MS_RDONLY)


def _fail(spec, message):
    with open(spec["start_error_file"], "w") as out:
        out.write(message)
    sys.stderr.write(message + "\n")
    sys.exit(128)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        for mount in spec["mounts"]:
            _bind(mount)
        os.makedirs(spec["cwd"], exist_ok=True)
        os.chdir(spec["cwd"])
    except OSError as exc:
        _fail(spec, f"failed to set up the container: {exc}")
    argv, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        _fail(spec, f'exec: "{argv[0]}": {exc.strerror} (PATH={env.get("PATH", "")})')


if __name__ == "__main__":
    main()
