"""sharpjax: KL-regularized RL post-training of language models in JAX (distribution
sharpening vs task rewards). Entry points: `python -m sharpjax` (the main job),
`python -m sharpjax.train`, `python -m sharpjax.eval`, `python -m sharpjax.plan`,
`python -m sharpjax.diagnose`."""

import importlib.metadata
import logging
import re

# The JAX minor versions CI tests, oldest and newest (setup.cfg's bounds are these: jax>=0.10.2,<0.13).
TESTED_JAX = ((0, 10), (0, 12))


def _check_jax_version() -> None:
    """One warning line on a JAX newer than the tested range, before anything fails later."""
    try:
        version = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        return  # the import of jax itself will say so
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m.group(1)), int(m.group(2))) > TESTED_JAX[1]:
        newest = ".".join(map(str, TESTED_JAX[1]))
        logging.getLogger("sharpjax").warning(
            f"sharpjax: jax {version} is newer than the newest tested ({newest}.x); if something breaks, "
            f"pip install 'jax<{TESTED_JAX[1][0]}.{TESTED_JAX[1][1] + 1}' (README: Supported versions)."
        )


_check_jax_version()
