"""The two Java tools of the COCO caption code: CoreNLP's PTBTokenizer and METEOR 1.5.

The jars bundled with ``pycocoevalcap`` 1.2 are the ones the official scorer uses.
To save time, the tokenizer runs once for references and outputs together (the
scorer starts it twice) and METEOR is started before anything else, because loading
its paraphrase table takes ~4 s, while the Python metrics run meanwhile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

# Tokens the scorer's PTBTokenizer wrapper removes after tokenisation.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)  # fmt: skip
# Fixed encoding and locale so results do not depend on the user's environment
# (the official numbers were produced under a UTF-8 locale). The client compiler
# alone (C1) starts faster: it halves the tokenizer's time and saves ~10% of
# METEOR's CPU time; outputs are byte-identical (checked on the E2E test set).
_JVM_FLAGS = ["-Dfile.encoding=UTF-8", "-Duser.language=en", "-Duser.country=US", "-XX:TieredStopAtLevel=1"]
INSTALL_HINT = "install a Java runtime, e.g. `apt-get install -y default-jre-headless`"


class JavaNotFoundError(RuntimeError):
    """METEOR, ROUGE_L and CIDEr need Java (CoreNLP tokenizer, METEOR jar)."""


def java_path() -> str:
    """The ``java`` executable, or an error that says how to install one."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(f"METEOR, ROUGE_L and CIDEr need Java but `java` is not on PATH; {INSTALL_HINT}")
    return java


def _coco_dir() -> Path:
    """Folder of the installed ``pycocoevalcap`` package (holds the jars)."""
    spec = importlib.util.find_spec("pycocoevalcap")  # a namespace package: no __file__
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pycocoevalcap is not installed; `pip install pycocoevalcap==1.2`")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def corenlp_jar() -> Path:
    """Stanford CoreNLP 3.4.1 jar bundled with pycocoevalcap."""
    return _coco_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"


def meteor_jar() -> Path:
    """METEOR 1.5 jar bundled with pycocoevalcap (its ``data/`` holds the paraphrases)."""
    return _coco_dir() / "meteor" / "meteor-1.5.jar"


def clean_tokens(line: str) -> str:
    """Post-processing of one tokenizer output line, as pycocoevalcap's ``PTBTokenizer``."""
    return " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)


# Line breaks of Java's lexer besides "\n": the scorer only replaces "\n" in captions,
# so any of these would shift every later line; as spaces they tokenise the same.
_JAVA_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x85\u2028\u2029"})


class PTBTokenizeJob:
    """One CoreNLP PTBTokenizer run (``-preserveLines -lowerCase``) over many texts.

    It starts at construction and writes to a file, not a pipe, so it finishes in
    the background while Python computes other metrics.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self.count = len(texts)
        self._dir = tempfile.mkdtemp(prefix="prefix-tuning-ptb-")
        source = os.path.join(self._dir, "captions.txt")
        with open(source, "wb") as handle:
            handle.write("\n".join(t.translate(_JAVA_BREAKS) for t in texts).encode("utf-8"))
        cmd = [java_path(), *_JVM_FLAGS, "-cp", str(corenlp_jar()),
               "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", source]  # fmt: skip
        self._out = open(os.path.join(self._dir, "tokens.txt"), "w+b")  # noqa: SIM115
        self._err = open(os.path.join(self._dir, "stderr.txt"), "w+b")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._err)
        except BaseException:
            self.close()
            raise

    def result(self) -> list[str]:
        """Tokenised, lowercased texts without punctuation tokens, one per input text."""
        try:
            self._proc.wait()
            self._out.seek(0)
            out = self._out.read()
            self._err.seek(0)
            err = self._err.read()
        finally:
            self.close()
        if self._proc.returncode != 0:
            raise RuntimeError(f"CoreNLP PTBTokenizer failed: {err.decode(errors='replace')[-2000:]}")
        lines = out.decode("utf-8").split("\n")
        if len(lines) == self.count + 1 and lines[-1] == "":
            lines.pop()
        if len(lines) != self.count:
            raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {self.count} texts")
        return [clean_tokens(line) for line in lines]

    def close(self) -> None:
        """Stop the tokenizer if still running and delete its files."""
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._out.close()
        self._err.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenise texts with one JVM start (blocking)."""
    return PTBTokenizeJob(texts).result() if texts else []


class MeteorProcess:
    """A METEOR 1.5 ``-stdio -l en -norm`` process, started ahead of use.

    Scoring follows pycocoevalcap's ``Meteor.compute_score``: one ``SCORE`` line per
    segment returns its statistics; one ``EVAL`` line with all statistics returns the
    per-segment scores and then the corpus score, which is what the scorer reports.
    """

    def __init__(self) -> None:
        jar = meteor_jar()
        cmd = [java_path(), *_JVM_FLAGS, "-Xmx2G", "-jar", str(jar),
               "-", "-", "-stdio", "-l", "en", "-norm"]  # fmt: skip
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )

    @staticmethod
    def score_line(refs: Sequence[str], hyp: str) -> str:
        """The ``SCORE`` request of pycocoevalcap's ``Meteor._stat`` (hyp cleaned only)."""
        hyp = hyp.replace("|||", "").replace("  ", " ")
        return " ||| ".join(("SCORE", " ||| ".join(refs), hyp))

    def _write(self, lines: list[str], errors: list[BaseException]) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
            self._proc.stdin.flush()
        except BaseException as exc:  # reported by the reader
            errors.append(exc)

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"METEOR stopped unexpectedly: {tail}")
        return line.decode("utf-8").strip()

    def score(self, refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
        """Corpus METEOR of tokenised outputs against tokenised references."""
        lines = [self.score_line(r, h) for r, h in zip(refs, hyps)]
        errors: list[BaseException] = []
        # Write from a thread while reading here, so neither pipe can fill up.
        writer = threading.Thread(target=self._write, args=(lines, errors), daemon=True)
        writer.start()
        stats = [self._readline() for _ in lines]
        writer.join()
        if errors:
            raise RuntimeError(f"writing to METEOR failed: {errors[0]}")
        self._write(["EVAL ||| " + " ||| ".join(stats)], errors)
        for _ in lines:
            self._readline()
        return float(self._readline())

    def close(self) -> None:
        """Stop the process (it is not reusable after an error)."""
        if self._proc.poll() is None:
            if self._proc.stdin:
                self._proc.stdin.close()
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
