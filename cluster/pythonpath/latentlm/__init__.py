"""``latentlm`` straight from a source tree, for Ray jobs whose working_dir is this repository.

pyproject.toml maps ``latentlm.platform`` -> ``platform/`` and ``latentlm.models`` -> ``models/``; that
mapping only exists once the repo is pip-installed. A Ray job gets the repo as an uploaded working_dir,
and cluster/runtime_env.yaml puts ``cluster/pythonpath`` on PYTHONPATH, so this package makes the
*uploaded* copy importable on the driver and on every worker: a local edit to models/ or platform/ runs on
the cluster without reinstalling anything. (An installed latentlm, editable or not, comes later on
sys.path and is shadowed.)

The repository root is this file's grand-grand-parent: <root>/cluster/pythonpath/latentlm/__init__.py.
``platform/`` and ``models/`` have no ``__init__.py`` and are found as namespace sub-packages of this one.
"""
import os as _os

__path__ = [_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))))]
