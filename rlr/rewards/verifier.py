"""Math answer checking for GSM8K (Cobbe et al. 2021) and MATH (Hendrycks et al. 2021) solutions.

The success reward of Gao et al. (2024) is 1 when the final answer of a response equals
the reference answer, else 0. ``verify(response, reference)`` computes it:

1. ``extract_answer``: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces), else the
   GSM8K ``#### 42`` line, else "The answer is ..." / "answer: ..." (the synthetic task ends
   with "answer: 9"), else None (scored 0).
2. ``normalize_answer``: one canonical string (the MATH normaliser of Hendrycks et al.,
   extended): LaTeX spacing and ``\\left``/``\\right`` dropped, ``\\text{}`` unwrapped, unit
   words, ``$`` and ``%`` dropped, ``\\dfrac`` -> ``\\frac``, and numbers written once:
   ``1,000`` -> ``1000``, ``18.00`` -> ``18``, ``0.5`` and ``\\frac{1}{2}`` -> ``1/2``.
3. ``answers_match``: equal strings; else equal numbers (exactly, or after rounding both
   to ROUND_DECIMALS places: ``0.333333`` = ``1/3``, ``1000001`` != ``1000000``); else
   symbolic equality with sympy (``\\sqrt{8}`` = ``2\\sqrt{2}``, ``x+1`` = ``1+x``);
   element-wise for tuples / intervals (ordered, brackets must agree) and sets / bare
   comma lists (unordered).

Safety: model output is untrusted. Nothing is ``eval``-ed: answers are parsed by a small
recursive-descent parser here (whitelisted tokens, bounded length, token count and nesting
depth); ASTs that would be costly (power towers, huge exponents or factorials, long
literals) are refused before sympy sees them. Sympy itself runs in a separate worker
process (started on first use, no jax, memory-limited) that is killed when a comparison
exceeds its time limit, so a hang really stops. Any bad input scores 0.0; nothing raises.
This module imports only the standard library (sympy only inside the worker), and needs a
POSIX host (select on pipes).
"""
import atexit
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
import warnings
from fractions import Fraction

MAX_ANSWER_CHARS = 1000  # longer answers are only whitespace-stripped and compared as strings
MAX_NUMBER_CHARS = 100  # longer numerals are compared as strings only
MAX_SYMBOLIC_CHARS = 300  # longer answers are never parsed
MAX_TOKENS = 150  # tokens of one parsed expression
MAX_DEPTH = 60  # parser recursion in one expression (about 3 levels a nested group or sqrt)
MAX_LITERAL_DIGITS = 50  # digits of a number literal sent to sympy
MAX_EXPONENT = 1000  # |numeric exponent| of a power
MAX_FACTORIAL = 1000  # largest literal n in n!
MAX_RESULT_DIGITS = 100_000  # estimated digits of any number an answer builds
MAX_ELEMENTS = 10  # elements of a tuple / set answer
ROUND_DECIMALS = 6  # numbers equal after rounding to this many decimal places are equal
SYMBOLIC_TIMEOUT_S = 0.5  # default time limit of all the sympy work of one answers_match / verify call
WORKER_START_TIMEOUT_S = 60.0  # time the worker may take to start (import sympy)

# ---------------------------------------------------------------------------- extraction


def _match_brace(s: str, open_index: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_index`` (``\\{``/``\\}`` skipped), or -1."""
    depth = 0
    i = open_index
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``); None if absent or unbalanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if i < len(text) and text[i] == " ":
        match = re.match(r" +([^\s$]+)", text[i:])
        return match.group(1) if match else None
    if i >= len(text) or text[i] != "{":
        return None
    end = _match_brace(text, i)
    return text[i + 1:end] if end >= 0 else None


_ANSWER_IS = re.compile(r"\banswer\b\**\s*(?:is\b\s*:?|:)[ \t]*\**", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """The final answer written in a solution ``text``, or None.

    In order: the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces; MATH style), the
    line after the last ``####`` (GSM8K), the rest of the line after the last "The answer
    is" / "answer:" (the synthetic task). A trailing period and surrounding ``**`` are
    dropped. Linear time in ``len(text)``.
    """
    if not isinstance(text, str):
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    hashes = text.rfind("####")
    if hashes >= 0:
        answer = text[hashes + 4:].lstrip().split("\n", 1)[0]
    else:
        last = None
        for last in _ANSWER_IS.finditer(text):
            pass
        if last is None:
            return None
        answer = text[last.end():].split("\n", 1)[0]
    answer = re.split(r"\.(?:\s|$)", answer.strip(), maxsplit=1)[0].strip().strip("*").strip()
    return answer or None


# ---------------------------------------------------------------------------- normalisation

_TEXT_COMMANDS = ("\\text", "\\textbf", "\\textit", "\\mbox", "\\mathrm", "\\mathbf", "\\operatorname")
_REPLACEMENTS = (
    (re.compile(r"\\[dt]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\(?:left|right|displaystyle|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])"), ""),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree(?![a-zA-Z])|°"), ""),
    (re.compile(r"\\?%"), ""),
    (re.compile(r"\\[!,;:]"), ""),
    (re.compile(r"\\ "), " "),
    (re.compile(r"\\(?:cdot|times)(?![a-zA-Z])"), "*"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"−"), "-"),
    (re.compile(r"π"), "\\\\pi "),
)
_NAMES = ("sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi")
# Words after a number that change its value, so are not dropped as units: function names and
# multipliers ("5 million" is not 5).
_NOT_UNITS = frozenset(_NAMES + ("dozen", "hundred", "thousand", "million", "billion", "trillion"))
_SHORT_UNITS = "cm|mm|km|kg|mg|ml|mL|ft|yd|mi|in|lb|lbs|oz|hr|hrs|min|mins|sec|secs|mph|sq"
_LETTER_UNITS = "m|g|s|h|L"  # only after a space: "5m" may be 5 times m
_POWER = r"(?:\s*\^\{?[23]\}?)?"
# A number followed by unit words: any word of 3+ letters after a space ("18 dollars"), a
# known short unit, attached or not ("5cm"), a one-letter unit after a space ("5 m^2");
# "2ab", "5m" and "2 x^2" are left alone.
_NUMBER_WITH_WORDS = re.compile(
    r"^(?P<num>[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?)"
    rf"(?P<words>(?:\s*(?:{_SHORT_UNITS})\b|\s+(?:{_LETTER_UNITS})\b|\s+[a-zA-Z]{{3,}})\.?{_POWER}"
    rf"(?:\s+(?:{_SHORT_UNITS}|{_LETTER_UNITS}|[a-zA-Z]{{3,}})\b\.?{_POWER})*)\s*$"
)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_DECIMAL = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_SLASH = re.compile(r"^([+-]?\d+)/([+-]?\d+)$")
_FRAC = re.compile(r"^([+-]?)\\frac\{([+-]?(?:\d+(?:\.\d+)?|\.\d+))\}\{([+-]?(?:\d+(?:\.\d+)?|\.\d+))\}$")


def _unwrap_commands(s: str, commands: tuple[str, ...]) -> str:
    """Replace each ``\\cmd{X}`` of ``commands`` by X (an unbalanced one is left as is)."""
    pattern = re.compile("(?:" + "|".join(re.escape(c) for c in commands) + r")\s*\{")
    out, i = [], 0
    while True:
        match = pattern.search(s, i)
        if match is None:
            break
        end = _match_brace(s, match.end() - 1)
        if end < 0:
            break
        out.append(s[i:match.start()])
        out.append(s[match.end():end])
        i = end + 1
    out.append(s[i:])
    return "".join(out)


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of a plain number: ``42``, ``-3.50``, ``.5``, ``7/2``, ``\\frac{7}{2}``; else None."""
    if len(s) > MAX_NUMBER_CHARS:
        return None
    if _DECIMAL.match(s):
        return Fraction(s)
    match = _SLASH.match(s)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2)))
    match = _FRAC.match(s)
    if match and Fraction(match.group(3)) != 0:
        value = Fraction(match.group(2)) / Fraction(match.group(3))
        return -value if match.group(1) == "-" else value
    return None


def normalize_answer(s: str) -> str:
    """One canonical string for an answer, so that equal answers often compare equal as strings.

    Drops ``$``, ``\\(``/``\\)``, a whole-answer ``\\boxed{}``, ``\\left``/``\\right``, LaTeX
    spacing (``\\!``, ``\\,``, ``\\ ``), degree marks, ``%``, unit words after a number
    ("18 dollars", ``5\\text{ cm}``, "12 cm^2", "5cm"; not "2ab", "2 x^2" nor "5 million"), a
    leading "x =", a trailing period and all whitespace; unwraps ``\\text{}``-like commands;
    ``\\dfrac``/``\\tfrac`` -> ``\\frac``,
    ``\\cdot``/``\\times`` -> ``*``, ``\\sqrt2`` -> ``\\sqrt{2}``, ``\\frac12`` -> ``\\frac{1}{2}``;
    writes plain numbers canonically: ``1,000`` -> ``1000``, ``18.00`` -> ``18``,
    ``0.5``/``\\frac{1}{2}``/``2/4`` -> ``1/2`` (percentages keep their number: ``50%`` -> ``50``).
    Answers longer than MAX_ANSWER_CHARS are only whitespace-stripped. Non-strings give "".
    """
    if not isinstance(s, str):
        return ""
    s = s.strip()
    if len(s) > MAX_ANSWER_CHARS:
        return "".join(s.split())
    boxed = _last_boxed(s)
    if boxed is not None and s.startswith(("\\boxed", "\\fbox")) and s.endswith(boxed + "}"):
        s = boxed
    s = _unwrap_commands(s, _TEXT_COMMANDS)
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = s.replace("\\[", "").replace("\\]", "")
    for pattern, replacement in _REPLACEMENTS:
        s = pattern.sub(replacement, s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", s)
    match = _NUMBER_WITH_WORDS.match(s)
    words = match and {w.lower() for w in re.findall(r"[a-zA-Z]+", match.group("words"))}
    if match and not words & _NOT_UNITS:
        s = match.group("num")
    s = "".join(s.split())
    s = re.sub(r"\\sqrt([a-zA-Z0-9])", r"\\sqrt{\1}", s)
    s = re.sub(r"\\frac([0-9a-zA-Z])", r"\\frac{\1}", s)
    s = re.sub(r"\\frac(\{[^{}]*\})([0-9a-zA-Z])", r"\\frac\1{\2}", s)
    s = re.sub(r"^\(([A-Ea-e])\)$", r"\1", s)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    value = _to_fraction(s)
    if value is not None:
        s = str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    return s


# ---------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"(\d+(?:\.\d+)?|\.\d+)|(\\[a-zA-Z]+)|([a-zA-Z]+)|([-+*/^!()\[\]{}])")
_COMMAND_ATOMS = {"\\pi": ("const", "pi"), "\\infty": ("const", "oo")}
_FUNCTIONS = ("sqrt", "sin", "cos", "tan", "log", "ln", "exp")
_WORD_NAMES = sorted(_NAMES, key=len, reverse=True)


class _Refused(Exception):
    """An answer the parser does not accept (unknown token, too long, too deep, too costly)."""


def _tokenize(s: str) -> list[tuple[str, str]]:
    """Tokens ``(kind, text)`` of a normalised answer; kinds: num, cmd, name, sym, op."""
    tokens, i = [], 0
    while i < len(s):
        if s[i].isspace():
            i += 1
            continue
        match = _TOKEN.match(s, i)
        if match is None:
            raise _Refused(f"unexpected character {s[i]!r}")
        num, cmd, word, op = match.groups()
        if num is not None:
            tokens.append(("num", num))
        elif cmd is not None:
            tokens.append(("cmd", cmd))
        elif op is not None:
            tokens.append(("op", op))
        else:
            j = 0
            while j < len(word):
                name = next((n for n in _WORD_NAMES if word.startswith(n, j)), None)
                tokens.append(("name", name) if name else ("sym", word[j]))
                j += len(name) if name else 1
        i = match.end()
        if len(tokens) > MAX_TOKENS:
            raise _Refused("too many tokens")
    return tokens


class _Parser:
    """Recursive descent over tokens into a JSON-able AST (nested lists).

    sum := product (('+'|'-') product)*;  product := unary (('*'|'/') unary | implicit power)*
    unary := ('-'|'+') unary | power;  power := postfix ('^' unary)?;  postfix := atom '!'*
    atom := number | letter | \\pi | \\infty | (sum) | [sum] | {sum} | \\frac g g | \\sqrt[n] g | f atom
    """

    def __init__(self, tokens):
        self.tokens, self.i, self.depth = tokens, 0, 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def take(self):
        token = self.peek()
        self.i += 1
        return token

    def expect(self, text):
        if self.take() != ("op", text):
            raise _Refused(f"expected {text!r}")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused("nested too deeply")

    def parse(self):
        node = self.sum()
        if self.peek()[0] != "end":
            raise _Refused(f"unexpected token {self.peek()[1]!r}")
        return node

    def sum(self):
        terms = [self.product()]
        while self.peek() in (("op", "+"), ("op", "-")):
            sign = self.take()[1]
            term = self.product()
            terms.append(term if sign == "+" else ["neg", term])
        return terms[0] if len(terms) == 1 else ["add", *terms]

    def starts_atom(self):
        kind, text = self.peek()
        return kind in ("num", "sym", "name", "cmd") or (kind == "op" and text in ("(", "[", "{"))

    def product(self):
        factors = [self.unary()]
        while True:
            token = self.peek()
            if token in (("op", "*"), ("op", "/")):
                self.take()
                factor = self.unary()
                factors.append(factor if token[1] == "*" else ["inv", factor])
            elif self.starts_atom():
                factors.append(self.power())
            else:
                break
        return factors[0] if len(factors) == 1 else ["mul", *factors]

    def unary(self):
        self.enter()
        token = self.peek()
        if token in (("op", "-"), ("op", "+")):
            self.take()
            node = self.unary()
            node = ["neg", node] if token[1] == "-" else node
        else:
            node = self.power()
        self.depth -= 1
        return node

    def power(self):
        base = self.postfix()
        if self.peek() == ("op", "^"):
            self.take()
            return ["pow", base, self.unary()]
        return base

    def postfix(self):
        node = self.atom()
        while self.peek() == ("op", "!"):
            self.take()
            node = ["fact", node]
        return node

    def atom(self):
        self.enter()
        kind, text = self.take()
        closing = {"(": ")", "[": "]", "{": "}"}
        if kind == "num":
            node = ["num", text]
        elif kind == "sym":
            node = ["sym", text]
        elif kind == "name":
            node = ["const", "pi"] if text == "pi" else ["func", text, self.atom()]
        elif kind == "op" and text in closing:
            node = self.sum()
            self.expect(closing[text])
        elif kind == "cmd" and text in _COMMAND_ATOMS:
            node = list(_COMMAND_ATOMS[text])
        elif kind == "cmd" and text == "\\frac":
            numerator = self.atom()
            node = ["mul", numerator, ["inv", self.atom()]]
        elif kind == "cmd" and text == "\\sqrt":
            if self.peek() == ("op", "["):
                self.take()
                index = self.sum()
                self.expect("]")
                node = ["root", self.atom(), index]
            else:
                node = ["func", "sqrt", self.atom()]
        elif kind == "cmd" and text[1:] in _FUNCTIONS:
            node = ["func", text[1:], self.atom()]
        else:
            raise _Refused(f"unexpected token {text!r}")
        self.depth -= 1
        return node


def _literal_value(node) -> Fraction | None:
    """Exact value of a node built only from number literals, + - * /; else None."""
    kind = node[0]
    if kind == "num":
        return Fraction(node[1])
    if kind == "neg":
        value = _literal_value(node[1])
        return None if value is None else -value
    if kind in ("add", "mul"):
        values = [_literal_value(child) for child in node[1:]]
        if any(v is None for v in values):
            return None
        return sum(values, Fraction(0)) if kind == "add" else math.prod(values, start=Fraction(1))
    if kind == "inv":
        value = _literal_value(node[1])
        return None if value is None or value == 0 else 1 / value
    return None


def _contains(node, kinds) -> bool:
    return isinstance(node, list) and (node[0] in kinds or any(_contains(child, kinds) for child in node[1:]))


def _check_cost(node) -> float:
    """Estimated decimal digits of the numbers ``node`` builds (a symbol counts 1); refuses
    power towers, |exponent| > MAX_EXPONENT, factorials of powers / factorials or of
    n > MAX_FACTORIAL, literals over MAX_LITERAL_DIGITS and results over MAX_RESULT_DIGITS."""
    kind = node[0]
    if kind == "num":
        if len(node[1]) > MAX_LITERAL_DIGITS:
            raise _Refused("number literal too long")
        return float(len(node[1]))
    if kind in ("sym", "const"):
        return 1.0
    children = [_check_cost(child) for child in node[1:] if isinstance(child, list)]
    if kind == "add":
        digits = max(children) + 1
    elif kind == "mul":
        digits = sum(children)
    elif kind == "pow":
        if _contains(node[2], ("pow", "fact", "func", "root")):
            raise _Refused("power tower")
        exponent = _literal_value(node[2])
        if exponent is not None and abs(exponent) > MAX_EXPONENT:
            raise _Refused("exponent too large")
        digits = children[0] * (1 if exponent is None else max(float(abs(exponent)), 1.0))
    elif kind == "fact":
        n = _literal_value(node[1])
        if _contains(node[1], ("pow", "fact")) or (n is not None and abs(n) > MAX_FACTORIAL):
            raise _Refused("factorial too large")
        digits = children[0] if n is None else max(1.0, float(abs(n)) * math.log10(max(float(abs(n)), 2.0)))
    else:  # neg, inv, func, root
        digits = max(children)
    if digits > MAX_RESULT_DIGITS:
        raise _Refused("result too large")
    return digits


def parse_expression(s: str) -> list | None:
    """The AST (nested lists, JSON-able) of a normalised answer, or None when refused."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return None
    try:
        node = _Parser(_tokenize(s)).parse()
        _check_cost(node)
        return node
    except (_Refused, RecursionError, ValueError, ZeroDivisionError):
        return None


# ---------------------------------------------------------------------------- sympy worker


def _to_sympy(sympy, node):
    """Build a sympy expression from a parser AST (runs in the worker)."""
    kind, args = node[0], node[1:]
    if kind == "num":
        return sympy.Rational(args[0])
    if kind == "sym":
        return sympy.Symbol(args[0])
    if kind == "const":
        return {"pi": sympy.pi, "oo": sympy.oo}[args[0]]
    children = [_to_sympy(sympy, a) for a in args if isinstance(a, list)]
    if kind == "add":
        return sympy.Add(*children)
    if kind == "mul":
        return sympy.Mul(*children)
    if kind == "neg":
        return -children[0]
    if kind == "inv":
        return sympy.Pow(children[0], -1)
    if kind == "pow":
        return sympy.Pow(children[0], children[1])
    if kind == "fact":
        return sympy.factorial(children[0])
    if kind == "root":
        return sympy.root(children[0], children[1])
    functions = {"sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
                 "log": sympy.log, "ln": sympy.log, "exp": sympy.exp}
    return functions[args[0]](children[0])


def _integer_digits(sympy, value) -> int:
    """Digits before the point of a constant expression's magnitude (0 below 1, or when it is
    not a finite real number); from a 15-digit estimate (runs in the worker)."""
    estimate = abs(sympy.N(value, 15))
    if not (estimate.is_real and estimate.is_finite and estimate >= 1):
        return 0
    return int(sympy.floor(sympy.log(estimate, 10))) + 1


def _sympy_equal(sympy, a, b, decimals: int) -> bool:
    """Whether two parser ASTs are equal expressions (runs in the worker).

    Never when either divides by zero (sympy's zoo or nan, which would equal each other).
    Identical; or, without symbols, real values equal after rounding to ``decimals`` places
    (evaluated to every integer digit, so 10^60 != 10^60 + 1); else simplify(a - b) == 0,
    after a quick rejection when the two differ at one of two fixed rational points.
    """
    x, y = _to_sympy(sympy, a), _to_sympy(sympy, b)
    if x.has(sympy.zoo, sympy.nan) or y.has(sympy.zoo, sympy.nan):
        return False
    if x == y:
        return True
    symbols = sorted(x.free_symbols | y.free_symbols, key=str)
    if not symbols:
        digits = decimals + 30 + max(_integer_digits(sympy, x), _integer_digits(sympy, y))
        vx, vy = sympy.N(x, digits), sympy.N(y, digits)
        if vx.is_real and vy.is_real and vx.is_finite and vy.is_finite:
            return round(Fraction(str(vx)), decimals) == round(Fraction(str(vy)), decimals)
    for origin in (sympy.Rational(7, 3), sympy.Rational(-5, 11)):
        point = {symbol: origin + i for i, symbol in enumerate(symbols)}
        try:
            vx, vy = complex(sympy.N(x.subs(point), 30)), complex(sympy.N(y.subs(point), 30))
        except (TypeError, ValueError):  # a pole or an undefined value: not decisive
            continue
        finite = all(map(math.isfinite, (vx.real, vx.imag, vy.real, vy.imag)))
        if finite and abs(vx - vy) > 1e-9 * max(1.0, abs(vx), abs(vy)):
            return False
    return sympy.simplify(x - y) == 0


def _serve() -> None:
    """Worker loop: read JSON requests {a, b, decimals} from stdin, answer {"equal": bool}."""
    try:  # die with the parent (thread that started it), and cap memory, where the OS allows it
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    except Exception:  # noqa: BLE001  (best effort: not Linux)
        pass
    import sympy

    sys.setrecursionlimit(10_000)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            equal = bool(_sympy_equal(sympy, request["a"], request["b"], request["decimals"]))
        except Exception:  # noqa: BLE001  (any failure of sympy means "not shown equal")
            equal = False
        sys.stdout.write(json.dumps({"equal": equal}) + "\n")
        sys.stdout.flush()


_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='rlr_verifier_worker')['_serve']()"


class _SymbolicWorker:
    """A sympy worker process, restarted after a timeout (killed, so a hang really stops)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None
        self._ready = False
        self._buffer = b""
        self._failed = False  # the worker could not start once: stop trying
        self._owner = os.getpid()

    def _start(self) -> None:
        self._owner = os.getpid()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )
        self._ready, self._buffer = False, b""

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
        self._proc, self._ready, self._buffer = None, False, b""

    def _readline(self, deadline: float) -> str | None:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _ensure_ready(self) -> bool:
        if self._failed:
            return False
        if self._owner != os.getpid():  # a forked child: the parent's worker is not ours to use
            self._proc, self._ready, self._buffer = None, False, b""
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self._start()
        if not self._ready:
            self._ready = self._readline(time.monotonic() + WORKER_START_TIMEOUT_S) == "ready"
            if not self._ready:
                self._stop()
                self._failed = True
                warnings.warn("rlr.rewards.verifier: the sympy worker did not start; "
                              "symbolic answers are scored as not equal", RuntimeWarning)
        return self._ready

    def warm_up(self) -> bool:
        with self._lock:
            try:
                return self._ensure_ready()
            except OSError:
                return False

    def equal(self, a, b, decimals: int, timeout_s: float) -> bool:
        with self._lock:
            try:
                if not self._ensure_ready():
                    return False
                self._proc.stdin.write((json.dumps({"a": a, "b": b, "decimals": decimals}) + "\n").encode())
                line = self._readline(time.monotonic() + timeout_s)
            except OSError:
                self._stop()
                return False
            if line is None:  # too slow (or died): kill it, and start the next one now
                self._stop()
                self._start()
                return False
            return json.loads(line).get("equal") is True

    def close(self) -> None:
        if self._owner == os.getpid():  # never kill the worker of a parent process
            with self._lock:
                self._stop()


_WORKER = _SymbolicWorker()
atexit.register(_WORKER.close)


def warm_up() -> bool:
    """Start the sympy worker process now (else the first symbolic comparison starts it, ~1 s).

    Returns whether it is ready.
    """
    return _WORKER.warm_up()


def symbolic_equal(
    a: str, b: str, decimals: int = ROUND_DECIMALS, timeout_s: float = SYMBOLIC_TIMEOUT_S
) -> bool:
    """Whether two normalised answers are equal expressions, checked by sympy in the worker
    within ``timeout_s`` (False on timeout, on refusal by the parser, or on any error)."""
    x, y = parse_expression(a), parse_expression(b)
    if x is None or y is None:
        return False
    return _WORKER.equal(x, y, decimals, timeout_s)


# ---------------------------------------------------------------------------- matching


def _split_top_level(s: str) -> list[str]:
    """Split at commas outside any bracket."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _encloses(s: str) -> bool:
    """Whether the bracket opening ``s`` closes at its last character (brackets of any kind)."""
    depth = 0
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0:
            return i == len(s) - 1
    return False


def _structure(s: str) -> tuple[tuple[str, ...], list[str]]:
    """(kind, elements) of a normalised answer: ("single",), ("ordered", open, close) for
    tuples / intervals, ("unordered",) for ``\\{a,b\\}`` sets and bare comma lists."""
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("unordered",), _split_top_level(s[2:-2])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _encloses(s):
        items = _split_top_level(s[1:-1])
        if len(items) > 1:
            return ("ordered", s[0], s[-1]), items
    items = _split_top_level(s)
    return (("unordered",), items) if len(items) > 1 else (("single",), [s])


def _cheap_equal(a: str, b: str, decimals: int) -> bool | None:
    """Equal strings, or two plain numbers compared exactly / after rounding; None: undecided."""
    if a == b:
        return True
    x, y = _to_fraction(a), _to_fraction(b)
    if x is None or y is None:
        return None
    return x == y or round(x, decimals) == round(y, decimals)


def _scalar_equal(a: str, b: str, decimals: int, deadline: float) -> bool:
    cheap = _cheap_equal(a, b, decimals)
    if cheap is not None:
        return cheap
    left = deadline - time.monotonic()
    return left > 0 and symbolic_equal(a, b, decimals, left)


def _unordered_equal(xs: list[str], ys: list[str], decimals: int, deadline: float) -> bool:
    """Greedy matching, cheap comparisons first so that sympy only sees the leftovers."""
    xs, ys = list(xs), list(ys)
    for x in list(xs):
        match = next((i for i, y in enumerate(ys) if _cheap_equal(x, y, decimals)), None)
        if match is not None:
            xs.remove(x)
            ys.pop(match)
    for x in xs:
        match = next((i for i, y in enumerate(ys) if _scalar_equal(x, y, decimals, deadline)), None)
        if match is None:
            return False
        ys.pop(match)
    return True


def answers_match(
    pred: str, ref: str, decimals: int = ROUND_DECIMALS, timeout_s: float = SYMBOLIC_TIMEOUT_S
) -> bool:
    """Whether answer ``pred`` equals answer ``ref`` (both already extracted).

    Equal after ``normalize_answer``; else, element by element (tuples / intervals in
    order with the same brackets, sets and comma lists in any order, at most MAX_ELEMENTS):
    equal numbers, exactly or after rounding both to ``decimals`` places (integers hence
    compare exactly; ``0.333333`` = ``1/3``, ``3.14159`` != ``\\pi``), else equal under sympy
    (simplify(a - b) == 0). ``timeout_s`` bounds all the symbolic work of one call
    (an unmatched element is then "not equal"). Never raises.
    """
    try:
        deadline = time.monotonic() + timeout_s
        a, b = normalize_answer(pred), normalize_answer(ref)
        if not a or not b:
            return False
        if a == b:
            return True
        if max(len(a), len(b)) > MAX_SYMBOLIC_CHARS:
            return False
        (kind_a, items_a), (kind_b, items_b) = _structure(a), _structure(b)
        if kind_a != kind_b or len(items_a) != len(items_b) or len(items_a) > MAX_ELEMENTS:
            return False
        if kind_a == ("unordered",):
            return _unordered_equal(items_a, items_b, decimals, deadline)
        return all(_scalar_equal(x, y, decimals, deadline) for x, y in zip(items_a, items_b))
    except Exception:  # noqa: BLE001  (bad input means "incorrect", never an exception)
        return False


def verify(response: str, reference: str, timeout_s: float = SYMBOLIC_TIMEOUT_S) -> float:
    """Success reward: 1.0 if the final answer of ``response`` equals the reference, else 0.0.

    ``reference`` is a full solution (its answer is extracted as for the response: boxed,
    ``####``, "answer:") or a bare answer. A response with no extractable answer, and any
    bad input, scores 0.0; symbolic checks stop after ``timeout_s`` in all.
    """
    try:
        pred = extract_answer(response)
        if pred is None or not isinstance(reference, str):
            return 0.0
        ref = extract_answer(reference) or reference
        return 1.0 if answers_match(pred, ref, timeout_s=timeout_s) else 0.0
    except Exception:  # noqa: BLE001
        return 0.0
