"""kubeplat on a terminal, as an operator sees it (issue 17): a redrawn line naming every
resource in flight during a long create; the summary names each resource to be replaced, with
the attribute forcing it, before the question; `kubeplat up | cat` still asks (stdin is the
terminal); Ctrl-C during the apply exits 130 and says it was interrupted, and the next `up`
converges. Real Terraform and provider against the sandbox, kubeplat on a pseudo-terminal
driven by pexpect.
"""

from __future__ import annotations

import itertools
import re
import shlex
import sys
from pathlib import Path

import pexpect
import pytest

from tests.integration.sandbox_user import kubeplat

pytestmark = pytest.mark.integration

SCREEN = (50, 250)  # rows, columns: wide enough that no status line wraps
UP = [sys.executable, "-m", "kubeplat", "up", "-e", "example"]


def on_terminal(user: dict[str, str], command: str) -> pexpect.spawn:
    """`command` (a shell line) on a fresh pseudo-terminal, with colours and redraws on (the
    user's NO_COLOR removed), its output kept."""
    env = {k: v for k, v in user.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    child = pexpect.spawn(
        "bash", ["-c", "set -o pipefail; " + command], cwd=user["CHECKOUT"], env=env,
        encoding="utf-8", codec_errors="replace", timeout=600, dimensions=SCREEN,
    )  # fmt: skip
    return child


def transcript(child: pexpect.spawn) -> str:
    """What the terminal showed so far, escape sequences removed."""
    seen = (child.before or "") + (child.after if isinstance(child.after, str) else "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen)


def finish(child: pexpect.spawn, shown: list[str], timeout: float = 900) -> int:
    """Wait (bounded) for the command to end; its exit code. `shown` gets what it printed."""
    child.expect(pexpect.EOF, timeout=timeout)
    shown.append(transcript(child))
    child.close()
    return int(child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus)


def test_progress_summary_piped_prompt_and_ctrl_c(user: dict[str, str]) -> None:
    # 1. The first `up`, confirmed on the terminal: while the load balancers are created
    # (the sandbox's provider waits 30 s and more on them), one line names each resource in
    # flight with its time so far, redrawn (never more than a second between two frames).
    shown: list[str] = []
    child = on_terminal(user, shlex.join(UP))
    child.expect("Apply these changes\\?", timeout=600)
    before = transcript(child)
    # The example: both layers, their network, balancers, roles, the pods' OIDC provider and
    # the EBS CSI driver's role and its policy, and the groups' lifecycle hooks (drain, ready,
    # etcd leave).
    assert "Terraform: 67 to add, 0 to change, 0 to destroy" in before, before[-3000:]
    assert "to destroy (" not in before and "to replace (" not in before
    child.sendline("y")
    assert finish(child, shown) == 0, shown[-1][-3000:]
    frames = re.findall(r"applying \((\d+)s\)([^\r\n]*)", shown[-1])
    balancer = [
        (int(total), int(alone.group(1)))
        for total, rest in frames
        if (alone := re.search(r"creating aws_lb\.api_public (\d+)s", rest))
    ]
    assert len({seconds for _, seconds in balancer}) >= 10, frames[-20:]
    totals = [int(total) for total, _ in frames]
    assert max(b - a for a, b in itertools.pairwise(totals)) <= 1, totals
    assert re.search(r"created aws_lb\.api_public \(\d+s\)", shown[-1])
    assert "api_endpoint = https://" in shown[-1]

    # 2. Another operating system for the nodes (the image's record is replaced; a DNS zone's
    # rename would be the classic case, but the emulator cannot delete a zone's NS records),
    # with stdout piped (`| cat`) and stdin the terminal: kubeplat still asks, and the summary
    # named the replacements and the rolls before asking.
    tfvars = Path(user["CHECKOUT"], "environments", "example.tfvars")
    tfvars.write_text(tfvars.read_text().replace('"debian-12"', '"ubuntu-24.04"'))
    child = on_terminal(user, shlex.join(UP) + " | cat")
    child.expect("Apply these changes\\?", timeout=600)
    before = transcript(child)
    assert "to replace (destroyed, then created again) (2):" in before, before[-3000:]
    assert '  terraform_data.image["compute"]  (forces replacement: triggers_replace)' in before
    assert "will roll: secure, compute" in before  # in the order they roll
    child.sendline("n")
    assert finish(child, shown) == 1
    assert "Error: cancelled: nothing was uploaded or applied" in shown[-1]

    # 3. Ctrl-C during the apply: Terraform stops cleanly, kubeplat exits 130 and its words
    # say the same (no "exit 1" of Terraform's), and the next `up` converges.
    child = on_terminal(user, shlex.join(UP))
    child.expect("Apply these changes\\?", timeout=600)
    child.sendline("y")
    child.expect(r"applying \(\d+s\)", timeout=300)
    child.sendintr()
    assert finish(child, shown, timeout=600) == 130, shown[-1][-3000:]
    assert "Error: interrupted; terraform stopped cleanly" in shown[-1]
    assert "exit 1" not in shown[-1]
    assert "Hint: run the same command again to resume" in shown[-1]
    again = kubeplat(user, "up", "-e", "example", "--auto-approve")
    assert again.returncode == 0, again.stderr[-3000:]
    settled = kubeplat(user, "plan", "-e", "example", "--detailed-exitcode")
    assert settled.returncode == 0, settled.stderr[-3000:]
