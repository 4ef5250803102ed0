"""The Agora commands the documentation prints run as printed: every shell variable they use is set in the same
block (docs/results/finetuning.md's used $EPOCHS without setting it), and each experiments.agora_experiment or
scripts/agora.py command parses with its own parser."""
import re
import shlex

import pytest

import scripts.agora as agora_cli
from bort.agora.options import parse_flags
from experiments import agora_experiment
from helpers import ROOT

DOCS = ["docs/agora.md", "docs/results/finetuning.md"]
PARSERS = {("-m", "experiments.agora_experiment"): agora_experiment.parse_args,
           ("scripts/agora.py",): lambda argv: parse_flags(agora_cli.build_parser(), argv)}


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def variables(block):
    """{name: first value} of the variables a block sets (NAME=value, `for NAME in a b; do`)."""
    found = {}
    for line in block.splitlines():
        assigned = re.match(r"\s*([A-Za-z_]\w*)=(\"[^\"]*\"|\S*)", line)
        if assigned:
            found[assigned.group(1)] = assigned.group(2).strip('"')
        loop = re.match(r"\s*for ([A-Za-z_]\w*) in (\S+)", line)
        if loop:
            found[loop.group(1)] = loop.group(2)
    return found


def commands(block):
    """Python commands of a block, continuation lines joined, comments dropped."""
    lines = [line.split(" #")[0] for line in block.replace("\\\n", " ").splitlines()]
    return [line.strip() for line in lines if line.strip().startswith("python ")]


def expand(command, values):
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: values[m.group(1)], command)


@pytest.mark.parametrize("doc", DOCS)
def test_documented_agora_commands_set_their_variables_and_parse(doc):
    checked = 0
    for block in bash_blocks(open(f"{ROOT}/{doc}", encoding="utf-8").read()):
        values = variables(block)
        for command in commands(block):
            used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", command))
            assert used <= set(values), f"{doc}: {command[:60]}... uses ${sorted(used - set(values))} unset"
            argv = shlex.split(expand(command, values))
            for head, parse in PARSERS.items():
                if tuple(argv[1:1 + len(head)]) == head:
                    parse(argv[1 + len(head):])
                    checked += 1
    assert checked >= 1, f"{doc}: no Agora command found"


def test_an_unset_variable_is_found():
    block = ("G=x\nfor A in 1 2; do\npython -m experiments.agora_experiment --output_dir $G/$A/$EPOCHS \\\n"
             "  -- --epochs 1\n")
    used = {u for c in commands(block) for u in re.findall(r"\$\{?([A-Za-z_]\w*)", c)}
    assert used - set(variables(block)) == {"EPOCHS"}
