"""Zipapp bootstrap: unpack once next to the archive, then run from the unpacked tree.

Importing the docker SDK from inside a zip costs about 0.3 s on every call because no
bytecode can be cached there. Unpacking once into a directory named by the archive's
content hash (and compiling it) makes every later call pay only for cached bytecode.
This file is copied to the archive's root as __main__.py.
"""

import os
import sys


def _unpacked(archive: str) -> str:
    target = archive[: -len(".pyz")] if archive.endswith(".pyz") else archive + ".d"
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    # Only the first call on a host pays for these imports.
    import compileall
    import shutil
    import zipfile

    tmp = f"{target}.tmp{os.getpid()}"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    compileall.compile_dir(tmp, quiet=2, workers=1)
    open(os.path.join(tmp, ".complete"), "w").close()
    try:
        os.rename(tmp, target)
    except OSError:  # another call unpacked it first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


if __name__ == "__main__":
    root = _unpacked(os.path.abspath(sys.argv[0]))
    sys.path[0] = root
    from agent.__main__ import main

    sys.exit(main())
