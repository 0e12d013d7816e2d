# How every job runs Python: with Snakemake's own interpreter, replacing the job's shell (`exec`), and,
# where util-linux's setpriv exists (Linux), asking the kernel for SIGTERM when its parent -- Snakemake,
# or the SLURM job step -- ends. Killing Snakemake, even with SIGKILL, then leaves no job running on as
# an orphan (docs/reliability.md). Every rule's command is one `{PYTHON} -m ...` line.

import shlex
import shutil
import sys

PYTHON = ("exec setpriv --pdeathsig TERM -- " if shutil.which("setpriv") else "exec ") + shlex.quote(sys.executable)
