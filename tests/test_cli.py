"""Every command answers --help with its usage on stdout and exit code 0 (in-process: nothing is loaded)."""

import pytest

from jaxfin import convert, distill, dpo, evaluate, generate, pairs, profile, scaling, train, transfer
from jaxfin.errors import run_cli

CLIS = {"python -m jaxfin.train": train.main, "python -m jaxfin.generate": generate.main,
        "python -m jaxfin.evaluate": evaluate.main, "python -m jaxfin.profile": profile.main,
        "python tools/convert_weights.py": convert.main, "python -m jaxfin.transfer": transfer.main,
        "python -m jaxfin.distill": distill.main, "python -m jaxfin.scaling": scaling.main,
        "python -m jaxfin.dpo": dpo.main, "python -m jaxfin.pairs": pairs.main}


@pytest.mark.parametrize("prog", list(CLIS))
def test_help_prints_usage_and_exits_0(prog, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(CLIS[prog], ["--help"])
    out = capsys.readouterr()
    assert e.value.code == 0 and out.err == ""
    assert out.out.startswith("usage: ") and prog in out.out.splitlines()[0]
