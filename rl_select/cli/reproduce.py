"""``reproduce``: rebuild a policy shipped in the package from the commands its training record keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from rl_select.cli.common import _friendly, app, console, out


@app.command("reproduce")
@_friendly
def reproduce_cmd(
    name: Annotated[str, typer.Argument(help="A shipped policy: pretrained (per-query) | pretrained-critic "
                                             "(fixed-prompt, with its probe critic).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands; run nothing.")] = False,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Where the rebuilt policy goes (default: the package's own file, replaced).")] = None,
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", help="Where the commands write their stores and run folders (default runs/reproduce/NAME; "
                           "rerun to resume).")] = None,
    record: Annotated[str | None, typer.Option(
        "--record", metavar="COMMANDS", help="Maintainers: re-save the shipped file with this rebuild record "
                                             "(rl-select commands joined by &&), its tensors unchanged.")] = None,
) -> None:
    """Rebuild a shipped policy (from committed configs, with the bundled model): print the commands its training
    record keeps, run them (run from the repository root) and copy the policy into the package (or --out FILE)."""
    from rl_select.errors import ConfigError
    from rl_select.experiments.rebuild import check_destination, plan_rebuild, record_rebuild, run_rebuild
    from rl_select.mdp.shipped import SHIPPED, packaged_path

    if name not in SHIPPED:
        raise ConfigError(f"no shipped policy {name!r}; expected one of {list(SHIPPED)}")
    if record is not None:
        _, after = record_rebuild(name, record)
        out.print(escape(f"{packaged_path(name)}: rebuild record set; tensors_sha256 {after} (unchanged)"),
                  soft_wrap=True)
        return
    dest = out_file if out_file is not None else packaged_path(name)
    if not dry_run:
        check_destination(dest)
    plan = plan_rebuild(name, work_dir=work_dir)
    if dry_run:
        for line in plan.lines():
            print(line)
        where = plan.output if plan.output is not None else plan.work_dir / "<run folder>" / "policy.safetensors"
        console.print(escape(f"the policy lands in {where}; reproduce copies it to {dest}"), highlight=False,
                      soft_wrap=True)
        return
    made = run_rebuild(plan, dest, say=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    out.print(escape(f"rebuilt {name}: {made}"), soft_wrap=True)
