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


def _mount(source, target, flags, shown_source=None):
    source_arg = source.encode() if source else None
    if _libc.mount(source_arg, target.encode(), None, flags, None) != 0:
        errno = ctypes.get_errno()
        shown = shown_source or source or ""
        raise OSError(errno, f"mount {shown} on {target}: {os.strerror(errno)}")


def _ensure_target(target, is_file):
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if is_file:
        open(target, "a").close()
    else:
        os.mkdir(target)


def _bind(mount, held_source):
    _ensure_target(mount["target"], mount["is_file"])
    _mount(held_source, mount["target"], MS_BIND | MS_REC, shown_source=mount["source"])
    if mount["read_only"]:
        _mount(None, mount["target"], MS_REMOUNT | MS_BIND | MS_RDONLY)


def _is_within(path, parent):
    return os.path.commonpath([path, parent]) == parent


def _restore(path, held_source, mounts):
    """Bind `path` back over a volume mounted on one of its parents (the node's own code)."""
    if any(_is_within(path, mount["target"]) for mount in mounts):
        os.makedirs(path, exist_ok=True)
        _mount(held_source, path, MS_BIND | MS_REC, shown_source=path)


def _fail(spec, message, error_dir=None):
    name = spec["start_error_file"]
    if error_dir is not None:  # the path may be hidden by a volume mounted over a parent
        name = os.path.basename(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with open(os.open(name, flags, 0o644, dir_fd=error_dir), "w") as out:
        out.write(message)
    sys.stderr.write(message + "\n")
    sys.exit(128)


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    error_dir = None
    try:
        # Hold the sources (and the error file's folder) open before mounting anything: a
        # volume mounted over one of their parents (an emptyDir at /tmp while the node's work
        # dir is under /tmp) would otherwise hide them from the mounts that follow.
        error_dir = os.open(os.path.dirname(spec["start_error_file"]), os.O_PATH | os.O_DIRECTORY)
        held = [os.open(mount["source"], os.O_PATH) for mount in spec["mounts"]]
        kept = [os.open(path, os.O_PATH) for path in spec["keep_visible"]]
        for mount, fd in zip(spec["mounts"], held, strict=True):
            _bind(mount, f"/proc/self/fd/{fd}")
        for path, fd in zip(spec["keep_visible"], kept, strict=True):
            _restore(path, f"/proc/self/fd/{fd}", spec["mounts"])
        os.makedirs(spec["cwd"], exist_ok=True)
        os.chdir(spec["cwd"])
    except OSError as exc:
        _fail(spec, f"failed to set up the container: {exc}", error_dir)
    argv, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        _fail(spec, f'exec: "{argv[0]}": {exc.strerror} (PATH={env.get("PATH", "")})', error_dir)


if __name__ == "__main__":
    main()
