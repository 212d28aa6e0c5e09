"""Grading: MMLU prompts and letter extraction, HumanEval code extraction and sandboxed runs, sanity checks.

Everything here is pure except ``run_sandboxed``, which runs model-written code in a subprocess
with resource limits, an empty environment, its own process group and a wall-clock timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from perftune.evals.data import LETTERS, CodeItem, KnownAnswer, Letter, McqItem

# --- MMLU --------------------------------------------------------------------------------------


def mmlu_prompt(item: McqItem) -> str:
    """The question, the four lettered options, and the instruction to answer with the letter only."""
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices, strict=True))
    return f"{item.question}\n\n{options}\n\nAnswer with the letter only."


_MARKUP = re.compile(r"[*_`#>]")
# "The answer is B", "Answer: (C)", "correct option is D" - an explicit statement wins over
# any earlier stray letter.
_EXPLICIT = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*[:\-]?\s*\(?\[?([ABCD])\b(?![\w'])")
_STANDALONE = re.compile(r"(?<![\w'])([ABCD])(?![\w'])")
# "A" followed by a lowercase word is the English article ("A good answer is B"), not option A.
_ARTICLE = re.compile(r"\s+[a-z]")


def mmlu_letter(reply: str) -> Letter | None:
    """The first standalone A-D letter in ``reply`` ("B", "B.", "(B)", "**B**", "The answer is B").

    ``None`` when there is none; the caller counts that as wrong.
    """
    text = _MARKUP.sub("", reply).strip()
    if len(text) == 1 and text.upper() in LETTERS:
        return _as_letter(text.upper())
    m = _EXPLICIT.search(text)
    if m:
        return _as_letter(m.group(1))
    for m in _STANDALONE.finditer(text):
        letter = m.group(1)
        if letter == "A" and _ARTICLE.match(text, m.end()) and not _is_option_a(text, m.end()):
            continue
        return _as_letter(letter)
    return None


def _is_option_a(text: str, end: int) -> bool:
    # "A is correct" / "A because ..." still name option A.
    return re.match(r"\s+(?:is|because|since|as)\b", text[end:]) is not None


def _as_letter(s: str) -> Letter | None:
    for letter in LETTERS:
        if s == letter:
            return letter
    return None


# --- HumanEval ---------------------------------------------------------------------------------

HUMANEVAL_STOP: tuple[str, ...] = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert ")

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def humaneval_prompt(item: CodeItem, mode: Literal["chat", "completions"]) -> str:
    """Chat asks for the whole function in a code block; completions continue the raw prompt."""
    if mode == "completions":
        return item.prompt
    return (
        "Complete the following Python function. Reply with the complete function, including the "
        "signature and any imports it needs, in one ```python code block.\n\n"
        f"```python\n{item.prompt}```"
    )


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def _truncate_completion(text: str) -> str:
    # A raw completion runs on past the function body (a new def, a test, a main block): cut at
    # the first top-level stop, as the reference HumanEval harness does.
    cut = len(text)
    for stop in HUMANEVAL_STOP:
        i = text.find(stop)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def extract_code(reply: str, item: CodeItem) -> str:
    """The program to test: a fenced python block if present, else the reply itself.

    A reply that does not define the entry point is a continuation of the prompt (completions
    mode), so the prompt goes in front of it.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    code: str | None = None
    for lang, body in blocks:
        if lang in ("python", "py", "python3") and _defines(body, item.entry_point):
            code = body
            break
    if code is None:
        for lang, body in blocks:
            if lang in ("python", "py", "python3", ""):
                code = body
                break
    if code is None:
        code = reply
    if _defines(code, item.entry_point):
        return code
    return item.prompt + _truncate_completion(code)


def humaneval_program(code: str, item: CodeItem) -> str:
    """``code`` followed by the item's test and the call that runs it."""
    return f"{code}\n\n{item.test}\n\ncheck({item.entry_point})\n"


_AS_BYTES = 2 * 1024**3
_FSIZE_BYTES = 16 * 1024**2
_REASON_CHARS = 200


def _limits(cpu_s: int) -> None:
    # Runs in the child between fork and exec: keep it to setrlimit calls.
    resource.setrlimit(resource.RLIMIT_AS, (_AS_BYTES, _AS_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FSIZE_BYTES, _FSIZE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _failure_reason(stderr: str, returncode: int) -> str:
    if returncode < 0:
        sig = -returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout"
        return f"killed by signal {signal.Signals(sig).name}"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return f"exit code {returncode}"
    last = lines[-1]
    return last if len(last) <= _REASON_CHARS else last[:_REASON_CHARS] + "..."


def run_sandboxed(program: str, timeout_s: float = 10.0, *, item: CodeItem | None = None) -> tuple[bool, str]:
    """Run ``program`` (plus ``item``'s test and ``check(entry_point)`` when given) in a subprocess.

    Sandbox: a fresh temp dir as cwd, an environment holding only PATH, ``python -I``, its own
    process group (killed as a whole on the wall timeout), stdin closed, and rlimits (address
    space 2 GiB, CPU ``timeout_s + 1`` s, file size 16 MiB). Returns ``(passed, reason)`` where
    reason is "passed", "timeout", or the last line of the error output.

    This limits accidents, not attackers: the program runs as our user with network access.
    """
    source = humaneval_program(program, item) if item is not None else program
    cpu_s = int(timeout_s) + 1
    with tempfile.TemporaryDirectory(prefix="perftune-eval-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        script = root / "program.py"
        script.write_text(source, encoding="utf-8")
        # Output goes to files, not pipes: RLIMIT_FSIZE then bounds it, and a child that floods
        # stdout cannot block on a full pipe.
        out_path, err_path = root / "stdout.txt", root / "stderr.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(script)],
                cwd=root,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=lambda: _limits(cpu_s),
            )
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
                return False, "timeout"
            finally:
                # Reap anything the program forked into its group, pass or fail.
                _kill_group(proc.pid)
        if returncode == 0:
            return True, "passed"
        stderr = err_path.read_bytes()[-8192:].decode("utf-8", errors="replace")
        return False, _failure_reason(stderr, returncode)


# --- sanity ------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.sub(r"[^0-9a-z]+", " ", text.lower()).split()


def check_sanity(reply: str, known: KnownAnswer) -> bool:
    """True when any accepted answer appears as whole word(s) in the reply (case-insensitive)."""
    words = _words(reply)
    for answer in known.accepted:
        target = _words(answer)
        if not target:
            continue
        k = len(target)
        if any(words[i : i + k] == target for i in range(len(words) - k + 1)):
            return True
    return False
