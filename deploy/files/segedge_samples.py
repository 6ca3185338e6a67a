"""collect.yml's helper: list, stage and remove samples on a device; plan and verify the
copies on the controller. Standard library only (the device's Python 3.9+).

    device:      python3 segedge_samples.py stage SAMPLES_DIR STAGE_DIR [--max N]
                 python3 segedge_samples.py remove SAMPLES_DIR < verified.json
    controller:  python3 segedge_samples.py plan DEST < listing.json
                 python3 segedge_samples.py verify DEST < listing.json

A sample is ``<camera>/images/<name>.jpg``, ``<camera>/annotations/trimaps/<name>.png``
and ``<camera>/annotations/samples/<name>.json`` (the sidecar, written last by the agent:
a sample is complete once it is there), ``name`` starting with ``segedge-``. Every path
is reached through directory descriptors opened with ``O_NOFOLLOW``: a symlink anywhere is
never followed, and a sample with a file that is not a regular one is skipped (left
alone). ``stage`` hard-links (or copies) the complete samples into a root-only folder
outside the sample tree, so the copy the controller fetches cannot be swapped for a
link between the listing and the fetch; ``remove`` deletes a sample only when each of
its files still has the sha256 the controller verified. Output: one JSON object.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import sys

PREFIX = "segedge-"
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
NAME = re.compile(r"segedge-[A-Za-z0-9._-]{1,200}\Z")
PARTS = (("images", ".jpg"), ("annotations/trimaps", ".png"), ("annotations/samples", ".json"))
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
MAX_SIDECAR = 1 << 20


def open_dir(path, parent=None, create=False):
    """A descriptor of each level of ``path`` (relative to ``parent``), no symlink followed;
    with ``create`` missing levels are made (mode 0700)."""
    if parent is None:
        fd = os.open("/" if os.path.isabs(path) else ".", DIR_FLAGS)
    else:
        fd = os.dup(parent)
    try:
        for part in [p for p in path.split("/") if p]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def hash_file(dir_fd, entry):
    """(sha256, size, inode) of a regular file in ``dir_fd``; OSError for anything else."""
    fd = os.open(entry, FILE_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file: " + entry)
        digest = hashlib.sha256()
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest(), info.st_size, (info.st_dev, info.st_ino)


def rel_paths(camera, name):
    return [camera + "/" + folder + "/" + name + suffix for folder, suffix in PARTS]


def safe_rel(rel):
    """A path of the sample layout: <camera>/<folder>/segedge-<...>.<suffix>, nothing else."""
    parts = rel.split("/")
    if len(parts) < 3 or not ID.match(parts[0]):
        return False
    for folder, suffix in PARTS:
        if "/".join(parts[1:-1]) == folder and parts[-1].endswith(suffix):
            return bool(NAME.match(parts[-1][: -len(suffix)]))
    return False


def list_samples(root, limit):
    """The complete samples under ``root`` (oldest first, at most ``limit``), each file's
    sha256 and size, and what was skipped and why."""
    samples, skipped = [], []
    try:
        root_fd = open_dir(root)
    except FileNotFoundError:
        return samples, skipped
    try:
        for camera in sorted(os.listdir(root_fd)):
            if not ID.match(camera):
                continue
            try:
                fds = [open_dir(camera + "/" + folder, root_fd) for folder, _ in PARTS]
            except OSError as exc:
                skipped.append({"camera": camera, "why": "folders: " + str(exc)})
                continue
            try:
                for entry in sorted(os.listdir(fds[2])):
                    if not entry.endswith(".json") or not NAME.match(entry[:-5]):
                        continue
                    name = entry[:-5]
                    if len(samples) >= limit:
                        break
                    files, prelabel = {}, None
                    try:
                        for fd, rel, (_folder, suffix) in zip(fds, rel_paths(camera, name),
                                                               PARTS):
                            sha, size, _ino = hash_file(fd, name + suffix)
                            files[rel] = {"sha256": sha, "size": size}
                        prelabel = read_prelabel(fds[2], entry)
                    except OSError as exc:
                        skipped.append({"camera": camera, "name": name, "why": str(exc)})
                        continue
                    samples.append({"camera": camera, "name": name, "files": files,
                                    "prelabel_sha256": prelabel})
            finally:
                for fd in fds:
                    os.close(fd)
    finally:
        os.close(root_fd)
    return samples, skipped


def read_prelabel(dir_fd, entry):
    fd = os.open(entry, FILE_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(MAX_SIDECAR + 1)
    try:
        value = json.loads(raw.decode("utf-8"))["prelabel"]["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None


def stage(root, dest, limit):
    """List the samples and link each verified file into ``dest`` (made anew, root only,
    outside ``root``); a file that changed since it was hashed is dropped with its sample."""
    real_root, real_dest = os.path.realpath(root), os.path.realpath(dest)
    if real_dest == real_root or real_dest.startswith(real_root.rstrip("/") + "/"):
        raise SystemExit("stage folder must be outside the sample folder: " + dest)
    parent = os.path.dirname(dest.rstrip("/"))
    os.makedirs(parent, 0o700, exist_ok=True)
    info = os.lstat(parent)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SystemExit("stage parent is not a folder of ours: " + parent)
    if os.path.lexists(dest):
        shutil.rmtree(dest)
    os.mkdir(dest, 0o700)
    samples, skipped = list_samples(root, limit)
    staged = []
    root_fd, dest_fd = open_dir(root), open_dir(dest)
    try:
        for sample in samples:
            try:
                for rel, meta in sample["files"].items():
                    link_verified(root_fd, dest_fd, rel, meta["sha256"])
            except OSError as exc:
                skipped.append({"camera": sample["camera"], "name": sample["name"],
                                "why": "changed while staged: " + str(exc)})
                continue
            staged.append(sample)
    finally:
        os.close(root_fd)
        os.close(dest_fd)
    return {"samples": staged, "skipped": skipped, "stage": dest}


def link_verified(root_fd, dest_fd, rel, sha):
    folder, entry = rel.rsplit("/", 1)
    src = open_dir(folder, root_fd)
    try:
        out = open_dir(folder, dest_fd, create=True)
        try:
            try:
                os.link(entry, entry, src_dir_fd=src, dst_dir_fd=out, follow_symlinks=False)
            except OSError:  # another file system, or links refused: a copy, read safely
                fd = os.open(entry, FILE_FLAGS, dir_fd=src)
                with os.fdopen(fd, "rb") as inp, os.fdopen(os.open(
                        entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                        dir_fd=out), "wb") as dst:
                    if not stat.S_ISREG(os.fstat(inp.fileno()).st_mode):
                        raise OSError("not a regular file: " + rel) from None
                    shutil.copyfileobj(inp, dst)
            got, _size, _ino = hash_file(out, entry)
            if got != sha:
                raise OSError("sha256 changed: " + rel)
        finally:
            os.close(out)
    finally:
        os.close(src)


def remove(root, verified):
    """Delete each verified sample whose files still have the verified sha256 (the inode
    hashed is the one unlinked); the sidecar last."""
    removed, kept = 0, []
    root_fd = open_dir(root)
    try:
        for sample in verified:
            opened = []
            try:
                for rel, sha in sample["files"].items():
                    if not safe_rel(rel):
                        raise OSError("not a sample path: " + rel)
                    folder, entry = rel.rsplit("/", 1)
                    fd = open_dir(folder, root_fd)
                    opened.append((fd, entry))
                    got, _size, ino = hash_file(fd, entry)
                    if got != sha:
                        raise OSError("changed since it was copied: " + rel)
                    opened[-1] = (fd, entry, ino)
                for fd, entry, ino in sorted(opened, key=lambda p: p[1].endswith(".json")):
                    info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                    if (info.st_dev, info.st_ino) == ino:
                        os.unlink(entry, dir_fd=fd)
                removed += 1
            except (OSError, KeyError, TypeError, AttributeError) as exc:
                name = sample.get("name") if isinstance(sample, dict) else None
                kept.append({"name": name, "why": str(exc)})
            finally:
                for item in opened:
                    os.close(item[0])
    finally:
        os.close(root_fd)
    return {"removed": removed, "kept": kept}


# --- the controller ---------------------------------------------------------------------
def plan(dest, listing):
    """The files to fetch: those of the listing the controller does not have yet (a copy
    there, corrected or not, is never overwritten); paths outside the layout refused."""
    fetch, refused = [], []
    for sample in listing.get("samples", []):
        for rel in sample.get("files", {}):
            if not safe_rel(rel):
                refused.append(rel)
            elif not os.path.lexists(os.path.join(dest, rel)) and no_links(dest, rel):
                fetch.append(rel)
    return {"fetch": fetch, "refused": refused}


def no_links(dest, rel):
    """No level of DEST/rel's folders is a symlink (the controller's copy stays inside)."""
    path = dest
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            return False
    return not os.path.islink(dest)


def sha_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(dest, listing):
    """The samples whose copies match the device's sha256 (a trimap corrected here counts
    when the device still holds the pre-label); each camera's trainval.txt rewritten:
    the lines of others kept, then every complete sample here, oldest first."""
    verified, mismatched, cameras = [], [], set()
    for sample in listing.get("samples", []):
        files, ok = sample.get("files", {}), True
        for rel, meta in files.items():
            path = os.path.join(dest, rel)
            if not safe_rel(rel) or not no_links(dest, rel) or os.path.islink(path) \
                    or not os.path.isfile(path):
                ok = False
                break
            device_sha = meta["sha256"]
            if sha_of(path) != device_sha and not (
                    rel.endswith(".png") and device_sha == sample.get("prelabel_sha256")):
                ok = False
                break
        if ok and files:
            verified.append({"camera": sample["camera"], "name": sample["name"],
                             "files": {rel: m["sha256"] for rel, m in files.items()}})
            cameras.add(sample["camera"])
        else:
            mismatched.append(sample.get("name"))
    changed = [c for c in sorted(cameras) if write_list(os.path.join(dest, c))]
    return {"verified": verified, "mismatched": mismatched, "lists_changed": changed}


def write_list(folder):
    """annotations/trainval.txt of a collected camera folder; True when it changed."""
    path = os.path.join(folder, "annotations", "trainval.txt")
    old = ""
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            old = handle.read()
    kept = [ln for ln in old.splitlines() if ln.strip() and not ln.split()[0].startswith(PREFIX)]
    names = sorted(n[:-5] for n in os.listdir(os.path.join(folder, "annotations", "samples"))
                   if n.endswith(".json") and NAME.match(n[:-5])
                   and all(os.path.isfile(os.path.join(folder, f + "/" + n[:-5] + s))
                           for f, s in PARTS))
    text = "\n".join(kept + names) + "\n"
    if text == old:
        return False
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return True


def main(argv):
    if len(argv) < 2 or argv[0] not in ("stage", "remove", "plan", "verify"):
        raise SystemExit(__doc__)
    if argv[0] == "stage":
        limit = int(argv[argv.index("--max") + 1]) if "--max" in argv else 1000
        out = stage(argv[1], argv[2], limit)
    elif argv[0] == "remove":
        out = remove(argv[1], json.load(sys.stdin))
    elif argv[0] == "plan":
        out = plan(argv[1], json.load(sys.stdin))
    else:
        out = verify(argv[1], json.load(sys.stdin))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
