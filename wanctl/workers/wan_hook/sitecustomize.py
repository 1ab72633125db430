"""Run at start-up by every Python process of `wanctl generate --backend wan-repo` (this folder
is first on their PYTHONPATH): install wanctl's decode hook (see `wanctl.workers.wan_hook`),
then the sitecustomize this one shadows, if any."""

from wanctl.workers.wan_hook import install, run_shadowed_sitecustomize

install()
run_shadowed_sitecustomize()
