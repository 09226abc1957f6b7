"""ISO 9660 images from a file tree, with ``genisoimage`` (Debian's package of that name).

The tree is written into a temporary folder beside the target, the image is
made with Rock Ridge and Joliet extensions (long names, as cloud-init expects)
under a temporary name and renamed into place, so a reader never sees half an
image and a running guest keeps the old one open until it stops.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from nodeagent.disks.protocol import DiskError

GENISOIMAGE = "genisoimage"


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = (root / relative).resolve()
        if not path.is_relative_to(root.resolve()):
            raise DiskError(f"config drive path {relative!r} leaves the drive")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


async def write_iso(files: dict[str, bytes], target: Path, label: str) -> None:
    """Write ``files`` (relative path -> content) as an ISO image labelled ``label``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".iso-", dir=target.parent))
    partial = target.with_name(f".{target.name}.partial")
    try:
        tree = scratch / "tree"
        await asyncio.to_thread(_write_tree, tree, files)
        try:
            process = await asyncio.create_subprocess_exec(
                GENISOIMAGE,
                "-quiet",
                "-input-charset",
                "utf-8",
                "-volid",
                label,
                "-rational-rock",
                "-joliet",
                "-output",
                str(partial),
                str(tree),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise DiskError(
                f"cannot run {GENISOIMAGE} (install the genisoimage package): {exc}"
            ) from exc
        _, stderr = await process.communicate()
        if process.returncode != 0:
            detail = stderr.decode(errors="replace").strip()
            raise DiskError(f"{GENISOIMAGE} failed: {detail}")
        await asyncio.to_thread(os.chmod, partial, 0o644)
        await asyncio.to_thread(os.replace, partial, target)
    finally:
        partial.unlink(missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, scratch, True)
