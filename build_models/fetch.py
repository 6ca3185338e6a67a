"""Download and unpack the official Oxford-IIIT Pet tarballs (resumable, checksummed).

    python -m build_models.fetch --dest data/oxford-iiit-pet

Each tarball downloads to ``<dest>/downloads/<file>.part`` and resumes with an HTTP
Range request after an interruption; it is checked (sha256, or md5 where only that
is published) before it is unpacked into the official layout under ``<dest>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

from build_models.errors import BuildError, HelpFormatter

BASE_URL = "https://thor.robots.ox.ac.uk/datasets/pets"


@dataclass(frozen=True)
class Source:
    url: str
    sha256: Optional[str] = None
    md5: Optional[str] = None  # torchvision's OxfordIIITPet pins these md5 sums

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


OFFICIAL = (
    Source(f"{BASE_URL}/images.tar.gz", md5="5c4f3ee8e5d25df40f4fd59a7f44e54c"),
    Source(f"{BASE_URL}/annotations.tar.gz", md5="95a8c909bbe2e81eed6a22bccdf3f68f"),
)


class FetchError(BuildError):
    pass


def digests(path: Path) -> Dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def check(path: Path, source: Source) -> Dict[str, str]:
    got = digests(path)
    for algo in ("sha256", "md5"):
        want = getattr(source, algo)
        if want and got[algo] != want.lower():
            raise FetchError(f"{path}: {algo} {got[algo]} != expected {want} "
                             f"(download corrupt or changed upstream; it was removed)")
    return got


def download(source: Source, folder: Path, timeout: float = 60.0, progress: bool = True
             ) -> Path:
    """Download ``source`` into ``folder`` resuming any ``.part``; return the checked file."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / source.filename
    if final.is_file():
        return final
    part = folder / (source.filename + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(source.url, headers={"User-Agent": "segedge-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the .part is complete
            part.replace(final)
            return final
        raise FetchError(f"{source.url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{source.url}: {exc} (offline? use a local copy instead)") from exc
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        with open(part, "ab" if resumed else "wb") as handle, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=source.filename,
                disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                handle.write(chunk)
                bar.update(len(chunk))
    part.replace(final)
    return final


def _has_data_filter() -> bool:
    return hasattr(tarfile, "data_filter")


def unpack(archive: Path, dest: Path) -> List[str]:
    """Extract a tarball under ``dest`` refusing paths that leave it; return top-level names."""
    dest = dest.resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (dest / m.name).resolve()
            if dest != target and dest not in target.parents:
                raise FetchError(f"{archive}: member '{m.name}' would extract outside {dest}")
        if _has_data_filter():
            tar.extractall(dest, filter="data")
        else:  # Python < 3.11.4: no filter, so refuse links and special files ourselves
            for m in members:
                if not (m.isfile() or m.isdir()):
                    kind = "link" if (m.issym() or m.islnk()) else "special file"
                    raise FetchError(f"{archive}: member '{m.name}' is a {kind}; "
                                     "only regular files and directories are extracted")
            tar.extractall(dest)
    return sorted({m.name.split("/", 1)[0] for m in members})


def fetch(dest: Path, sources: Sequence[Source] = OFFICIAL, progress: bool = True,
          timeout: float = 60.0) -> Dict[str, Any]:
    dest = Path(dest)
    downloads = dest / "downloads"
    files = []
    for source in sources:
        path = download(source, downloads, timeout, progress)
        try:
            sums = check(path, source)
        except FetchError:
            path.unlink(missing_ok=True)
            raise
        files.append({"file": str(path), "url": source.url, **sums,
                      "unpacked": unpack(path, dest)})
    report = {"step": "fetch", "dest": str(dest), "files": files,
              "layout_ok": all((dest / p).exists() for p in
                               ("images", "annotations/trimaps", "annotations/trainval.txt",
                                "annotations/test.txt"))}
    (dest / "fetch-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="segedge-build fetch", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--dest", required=True, help="folder to fill with the official layout")
    parser.add_argument("--base-url", default=BASE_URL, help="mirror holding both tarballs")
    parser.add_argument("--images-sha256", help="expected sha256 of images.tar.gz")
    parser.add_argument("--annotations-sha256", help="expected sha256 of annotations.tar.gz")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the server")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    args = parser.parse_args(argv)
    sources = []
    for official, sha in zip(OFFICIAL, (args.images_sha256, args.annotations_sha256)):
        url = f"{args.base_url.rstrip('/')}/{official.filename}"
        same = args.base_url == BASE_URL
        sources.append(Source(url, sha256=sha, md5=official.md5 if same or not sha else None))
    return fetch(Path(args.dest), sources, args.progress, args.timeout)



