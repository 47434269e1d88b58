"""The exercise notebooks' checks: each learner's answer against the truth, in one line.

llama3_from_scratch.exercises.ipynb (written by tests/make_exercises.py from the walkthrough) leaves some lines
blank. Each blank sits in a `with exercise(...)` block that names the step's inputs, and the line after the
block hands the answer to check():

    with exercise("rms_norm", x_float=x_float, norm_eps=norm_eps) as x_normed:
        x_normed = ...  # exercise 3 (rms_norm): your code
    x_normed = check("rms_norm", x_normed)

exercise() takes the inputs before the learner's line runs (a copy of each small tensor, the version counter of
each large one and of each that needs gradients; a module or other object as it is), so a line that rebinds or writes into an input cannot change the truth it is judged against;
it binds an answer's name that is not bound yet to a placeholder and catches an exception the learner's line
raises, so that the check can say so and the lesson goes on. check(name, answer, **inputs) also works alone, with the inputs given at once (the tests call it so).
check() judges the answer and returns the value the notebook goes on with: the learner's own object when it is
right, else the reference result computed from the inputs taken before the line, with the walkthrough's own
arithmetic. A blank left as it is, a wrong answer or a line that raised so never stops the lesson, and check()
itself never raises, whatever the answer is. The cell after the exercise calls report(name), which prints one
line:

    exercise 3 (rms_norm): not attempted yet: the cells below use the reference result; hint('rms_norm') helps
    exercise 3 (rms_norm): correct: equals the float64 truth to 1 unit in the last place of torch.float32
    exercise 3 (rms_norm): wrong: ... (what is wrong, never the expected values) ...

Numbers are held to the truth computed in float64 from the same inputs, with the project's rounding rule
(llama3_support/rounding.py): an answer is right when it is as close to the truth as the walkthrough's own
result, in the compute dtype, could be (SAFETY times its error, never less than the rounding floor). Ids,
lookups, masks, cache writes and the layer loop involve no rounding and are compared exactly. A known mistake is
recognised at its own scale. A rule (the key/value head, the mask, the RoPE frequencies, top-p) is also run on
configurations of the check's own, where its common mistakes give other values than the right rule.

A check inside a function (RMSNorm, the logits, the cache) judges every call until report() has spoken for
that definition of the function; from then on it only hands back the learner's result when it was right and
the reference when not, without recomputing the truth. Running the function's cell again defines it anew and
arms the check again. hint(name) and hint(name, 2) print two levels of hints, solution(name) then the
walkthrough's own lines; scoreboard() prints every report line and whose code carried the lesson.

Each notebook has its own numbered set of exercises (ExerciseSet); WALKTHROUGH is this file's.
"""

import ast
import contextlib
import io
import json
import linecache
import math
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama3_support.rounding import rounding_floor, rounding_tolerance, ulp
from llama3_support.vocabulary import LLAMA3_STOP_TOKENS

NOT_ATTEMPTED, CORRECT, WRONG = "not attempted yet", "correct", "wrong"
FALLBACK = "the cells below use the reference result"
TRUTH_DTYPE = torch.float64
TRUTH_ROWS_PER_CHUNK = 8192  # output-projection rows converted to float64 at a time (0.27 GB at the 8B's width)
SNAPSHOT_BYTES = 64 * 2**20  # an input up to this size is copied before the learner's line; a larger one (a weight
                             # matrix of a large model) is watched through its version counter
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Verdict:
    kind: str          # NOT_ATTEMPTED, CORRECT or WRONG
    message: str = ""  # what the number means, or what is wrong


@dataclass
class Exercise:
    number: int
    name: str
    title: str
    judge: callable                # judge(answer, **inputs, memory) -> (Verdict, reference)
    reference: callable            # reference(**inputs, memory): what the notebook goes on with
    hints: tuple                   # two levels
    exercise_set: object = None    # the ExerciseSet (one notebook) it belongs to
    minutes: int = 5               # a time budget, as ARENA gives one
    difficulty: int = 1            # 1 (one line from the hint) to 3 (a rule to work out)
    summarize: callable = None     # summarize(verdicts) -> Verdict, for a check called once per head or layer
    unchecked: str = "the cell has not run the line with the blank yet: run the exercise's cell first"
    answer_is: str = None          # the input that the answer itself is (the cache, written in place)
    parts: int = 1                 # how many names the answer has (gate, up, ffn_output: 3)
    probes: callable = None        # probes(**inputs) -> [inputs of the check's own], for a rule
    snapshot: callable = None      # snapshot(inputs) -> what the reference needs to put back (the cache's layer),
                                   # handed to judge and reference as memory["saved"]


@dataclass
class _Progress:
    verdicts: list = field(default_factory=list)
    code: object = None           # the code object whose calls were judged
    reported_code: object = None  # the code object report() spoke for
    final: Verdict = None
    memory: dict = field(default_factory=dict)  # what a loop's check carries from one call to the next
    pending: object = None        # the open exercise() block: the inputs taken before the learner's line
    hints_seen: set = field(default_factory=set)


class ExerciseSet:
    """One notebook's exercises, numbered in the order they are registered (their order in the notebook)."""

    def __init__(self, notebook: str):
        self.notebook = notebook  # the lesson the copy is made from, beside this package
        self.exercises = {}

    def exercise(self, name: str, title: str, hints: tuple, reference: callable, **options):
        """Register judge(answer, **inputs, memory) -> (Verdict, reference) as the check of exercise `name`."""
        def register(judge):
            if name in ALL_EXERCISES:
                raise ValueError(f"exercise {name!r} is registered twice: names are shared by every notebook")
            exercise = Exercise(len(self.exercises) + 1, name, title, judge, reference, hints, self, **options)
            self.exercises[name] = ALL_EXERCISES[name] = exercise
            return judge
        return register


ALL_EXERCISES = {}
WALKTHROUGH = ExerciseSet("llama3_from_scratch.ipynb")
EXERCISES = WALKTHROUGH.exercises
_exercise = WALKTHROUGH.exercise
_progress = {}


def _progress_of(name: str) -> _Progress:
    return _progress.setdefault(name, _Progress())


# ---------------------------------------------------------------- the learner's line, kept apart


class Unanswered:
    """What an answer's name holds until the learner's line assigns it (a name not bound before the block)."""

    def __repr__(self):
        return "<no answer yet>"


_parsed = {}  # (file or cell, its source) -> its `with` statements by line: a function's cell is parsed once


def _frame_source(frame, lineno: int):
    """The `with` statement that starts at lineno in the frame's cell or file, parsed; None when unknown."""
    lines = linecache.getlines(frame.f_code.co_filename, frame.f_globals)
    if not lines:
        return None
    key = (frame.f_code.co_filename, "".join(lines))
    if key not in _parsed:
        try:
            tree = ast.parse(key[1])
        except SyntaxError:
            tree = ast.Module(body=[], type_ignores=[])
        _parsed[key] = {node.lineno: node for node in ast.walk(tree) if isinstance(node, ast.With)}
    return _parsed[key].get(lineno)


def _input_variables(statement) -> dict:
    """{input: the cell's variable} for the inputs of `with exercise(...)` given as plain names."""
    call = statement.items[0].context_expr
    return {keyword.arg: keyword.value.id for keyword in getattr(call, "keywords", [])
            if isinstance(keyword.value, ast.Name)}


def _answer_names(statement) -> list:
    """The names after `as` in `with exercise(...) as (a, b):`."""
    target = statement.items[0].optional_vars
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple) and all(isinstance(element, ast.Name) for element in target.elts):
        return [element.id for element in target.elts]
    return []


def _names_assigned(body) -> set:
    return {node.id for statement in body for node in ast.walk(statement)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}


def _is_data(value) -> bool:
    return not isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type,
                                  types.MethodType)) and not callable(value)


class _Attempt:
    """The `with exercise(name, **inputs)` block around the learner's line (see the module's docstring)."""

    def __init__(self, name: str, inputs: dict):
        self.name, self.inputs = name, inputs
        self.exercise = ALL_EXERCISES[name]
        self.placeholders, self.saved, self.custom = None, {}, None
        self.frame = self.statement = None
        self.with_line = self.error = None
        self.bound = {}  # the frame's names that held an input object before the line

    def __enter__(self):
        progress = _progress_of(self.name)
        progress.pending = self
        self.frame = sys._getframe(1)
        self.with_line = self.frame.f_lineno
        judged_right = (progress.reported_code is self.frame.f_code and progress.final is not None
                        and progress.final.kind == CORRECT)
        if not judged_right:
            self._take_inputs()
        # the answer's names keep the values they hold (a line may read its own name: hidden = layer(hidden));
        # a name not bound yet gets a placeholder, so that the check line never meets a NameError
        statement = self.statement_node()
        names = _answer_names(statement) if statement is not None else []
        parts = self.exercise.parts
        if len(names) != parts:
            names = [None] * parts
        locals_now = self.frame.f_locals
        self.placeholders = tuple(locals_now[name] if name in locals_now else Unanswered() for name in names)
        return self.placeholders[0] if parts == 1 else self.placeholders

    def _take_inputs(self):
        for key, value in self.inputs.items():
            if isinstance(value, torch.Tensor):
                # a tensor in autograd's graph (a module's input or weight in training) is watched, not copied: the
                # truth and the reference are computed from it itself, so that gradients flow through them
                small = value.numel() * value.element_size() <= SNAPSHOT_BYTES and not value.requires_grad
                self.saved[key] = (value.detach().clone() if small else None, _version(value))
            elif isinstance(value, (list, dict, set)) and key != self.exercise.answer_is:
                self.saved[key] = (type(value)(value), None)
        if self.exercise.snapshot is not None:
            self.custom = self.exercise.snapshot(self.inputs)
        locals_now = self.frame.f_locals
        objects = {id(value) for value in self.inputs.values() if isinstance(value, (torch.Tensor, list, dict))}
        self.bound = {name: value for name, value in locals_now.items() if id(value) in objects}

    def __exit__(self, kind, error, traceback):
        if kind is None or not issubclass(kind, Exception):
            return False
        self.error = error
        return True  # the learner's exception is the check's to report: the lesson goes on

    # -- what check() asks

    def changed_inputs(self) -> tuple:
        """(the names the cell gives the inputs that the learner's line wrote into or rebound, the inputs as they
        were before the line) ; restore() then puts the values back (and a rebound name, at module level)."""
        statement = self.statement_node()
        variables = _input_variables(statement) if statement is not None else {}
        changed, before, self.to_restore = [], dict(self.inputs), []
        for key, (copy, version) in self.saved.items():
            value = self.inputs[key]
            if isinstance(value, torch.Tensor):
                if key == self.exercise.answer_is:
                    continue
                mutated = _version(value) != version if version is not None else (
                    copy is not None and not _same_values(value, copy))
                if mutated:
                    changed.append(variables.get(key, key))
                    if copy is not None:
                        before[key] = copy.clone()
                        self.to_restore.append((value, copy))
            elif value != copy:
                changed.append(variables.get(key, key))
                before[key] = copy
                self.to_restore.append((value, copy))
        if statement is not None:
            answers = set(_answer_names(statement))
            targets = _names_assigned(statement.body) - answers
            for name, value in self.bound.items():
                now = self.frame.f_locals.get(name, value)
                if now is not value and name in targets:
                    changed.append(name)
                    if self.frame.f_code.co_name == "<module>":
                        self.to_restore.append((name, value))
        return sorted(set(changed)), before

    def restore(self):
        """Put back what the learner's line changed of the inputs, so that the lesson goes on as it would have."""
        for target, value in getattr(self, "to_restore", []):
            with contextlib.suppress(Exception):
                if isinstance(target, str):
                    self.frame.f_globals[target] = value
                elif isinstance(target, torch.Tensor):
                    target.copy_(value)
                elif isinstance(target, list):
                    target[:] = value
                else:
                    target.clear()
                    target.update(value)

    def statement_node(self):
        if self.statement is None and self.frame is not None:
            self.statement = _frame_source(self.frame, self.with_line) or False
        return self.statement or None

    def rerun(self, probe_inputs: dict):
        """The learner's line run again with some inputs replaced (a configuration of the check's own).
        None when the line reads a value that is not one of the check's inputs (it could not be replaced)."""
        statement = self.statement_node()
        if statement is None:
            return None
        variables = _input_variables(statement)
        if not all(key in variables for key in probe_inputs):
            return None
        namespace = dict(self.frame.f_globals)
        namespace.update(self.frame.f_locals)
        targets = _names_assigned(statement.body)
        read = {node.id for line in statement.body for node in ast.walk(line)
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        replaceable = set(variables.values())
        if any(name not in replaceable and name not in targets and name in namespace and _is_data(namespace[name])
               for name in read):
            return None
        namespace.update({variables[key]: value for key, value in probe_inputs.items()})
        module = ast.Module(body=statement.body, type_ignores=[])
        exec(compile(module, self.frame.f_code.co_filename, "exec"), namespace)  # noqa: S102 (the learner's line)
        item = statement.items[0].optional_vars
        if isinstance(item, ast.Name):
            return namespace[item.id]
        if isinstance(item, ast.Tuple):
            return tuple(namespace[element.id] for element in item.elts)
        return None


def _version(tensor: torch.Tensor):
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor keeps no version counter
        return None


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b) or (a.isnan() == b.isnan()).all()
                                                              and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))


def exercise(name: str, **inputs):
    """The block around the learner's line: `with exercise("rms_norm", x_float=x_float, norm_eps=norm_eps) as x_normed:`"""
    attempt = _Attempt(name, inputs)
    return attempt


# ---------------------------------------------------------------- what the learner sees


def _blank(answer) -> bool:
    if answer is Ellipsis:
        return True
    return isinstance(answer, tuple) and any(part is Ellipsis for part in answer)


def _unanswered(answer) -> bool:
    """Whether a placeholder is in the answer: the learner's line raised, or did not assign the name."""
    parts = answer if isinstance(answer, tuple) else (answer,)
    return any(isinstance(part, Unanswered) for part in parts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def check(name: str, answer, **inputs):
    """Judge answer against the truth computed from the inputs; return what the notebook goes on with: the
    answer itself when it is right, else the reference result. Never raises, whatever the answer is.
    Inside a `with exercise(name, ...)` block's cell the inputs are the ones that block took before the line."""
    exercise, progress = ALL_EXERCISES[name], _progress_of(name)
    attempt, progress.pending = progress.pending, None
    if attempt is not None and attempt.name != name:
        attempt = None
    changed = []
    if attempt is not None:
        changed, inputs = attempt.changed_inputs()
    caller = sys._getframe(1).f_code
    try:
        return _check(exercise, progress, attempt, caller, answer, inputs, changed)
    except Exception as error:  # noqa: BLE001 (a check never stops the lesson)
        progress.verdicts.append(Verdict(WRONG, f"the check could not judge this answer ({_first_line(error)})"))
        try:
            return exercise.reference(**inputs, memory=progress.memory)
        except Exception:  # noqa: BLE001
            return answer
    finally:
        if attempt is not None:
            attempt.restore()


def _check(exercise, progress, attempt, caller, answer, inputs, changed):
    if exercise.answer_is and exercise.answer_is not in inputs:
        inputs[exercise.answer_is] = answer
    progress.memory["saved"] = attempt.custom if attempt is not None else None
    if progress.reported_code is caller and progress.final is not None:  # judged already, this definition
        raised = attempt is not None and attempt.error is not None
        if progress.final.kind == CORRECT and not changed and not _unanswered(answer) and not raised:
            return answer
        return exercise.reference(**inputs, memory=progress.memory)
    if caller is not progress.code:
        progress.verdicts, progress.code = [], caller
    error = attempt.error if attempt is not None else None
    if error is not None:
        verdict = Verdict(WRONG, f"your line raised {_first_line(error)}")
        reference = exercise.reference(**inputs, memory=progress.memory)
    elif _blank(answer):
        verdict, reference = Verdict(NOT_ATTEMPTED), exercise.reference(**inputs, memory=progress.memory)
    elif _unanswered(answer):
        reference = exercise.reference(**inputs, memory=progress.memory)
        verdict = Verdict(NOT_ATTEMPTED, "the block does not assign the answer's name: keep `name = your code`")
    else:
        verdict, reference = exercise.judge(answer, **inputs, memory=progress.memory)
        if verdict.kind == CORRECT and exercise.probes is not None and attempt is not None:
            verdict = _probed(exercise, attempt, inputs) or verdict
        if verdict.kind == CORRECT and changed:
            verdict = Verdict(WRONG, f"your result is right, but your line changed {', '.join(changed)}, an input of "
                                     "this step (an in-place operation, or a new value for the name): the cells below "
                                     "go on with the value it had before your line")
    progress.verdicts.append(verdict)
    return answer if verdict.kind == CORRECT else reference


def _probed(exercise, attempt, inputs):
    """A verdict when the learner's line, run on the check's own configurations, breaks the rule; None if not."""
    for description, replaced in exercise.probes(**inputs):
        try:
            mine = attempt.rerun(replaced)
        except Exception as error:  # noqa: BLE001
            return Verdict(WRONG, f"right on this checkpoint, but on {description} your line raised "
                                  f"{_first_line(error)}")
        if mine is None:
            continue
        verdict, _ = exercise.judge(mine, **{**inputs, **replaced}, memory={})
        if verdict.kind != CORRECT:
            return Verdict(WRONG, f"right on this checkpoint by chance, not on {description}: {verdict.message}")
    return None


def verdict_of(name: str) -> Verdict:
    """The one verdict on everything check(name, ...) judged since the last report."""
    exercise, progress = ALL_EXERCISES[name], _progress_of(name)
    verdicts = progress.verdicts
    if not verdicts:
        return Verdict(NOT_ATTEMPTED, exercise.unchecked)
    if exercise.summarize is not None:
        return exercise.summarize(verdicts)
    for kind in (NOT_ATTEMPTED, WRONG):
        first = next((verdict for verdict in verdicts if verdict.kind == kind), None)
        if first is not None:
            return first
    return verdicts[0]


def line_of(name: str, verdict: Verdict) -> str:
    exercise = ALL_EXERCISES[name]
    head = f"exercise {exercise.number} ({name}): {verdict.kind}"
    if verdict.kind == CORRECT:
        return f"{head}: {verdict.message}" if verdict.message else head
    detail = f"{verdict.message}; " if verdict.message else ""
    return f"{head}: {detail}{FALLBACK}; hint({name!r}) helps"


def report(name: str, probe: callable = None) -> None:
    """Print the exercise's one line; probe() first runs code that reaches the exercise (a sampler, say).
    The verdict stays in last_verdict(name); nothing is returned, so a cell ending in report() shows only the line."""
    if probe is not None:
        try:
            probe()
        except Exception as error:  # noqa: BLE001
            _progress_of(name).verdicts.append(Verdict(WRONG, f"your code raised {_first_line(error)}"))
    progress = _progress_of(name)
    if progress.verdicts or progress.final is None:  # else nothing was judged since: the same verdict again
        progress.final, progress.reported_code = verdict_of(name), progress.code
        progress.verdicts = []
    print(line_of(name, progress.final))


def last_verdict(name: str) -> Verdict:
    """What report(name) printed last (None before the first report)."""
    return _progress_of(name).final


def _current(name: str) -> Verdict:
    progress = _progress_of(name)
    return verdict_of(name) if progress.verdicts or progress.final is None else progress.final


def hint(name: str, level: int = 1) -> None:
    """Print the exercise's first hint, or with level 2 the second, more direct one."""
    exercise = ALL_EXERCISES[name]
    if level not in (1, 2):
        raise ValueError(f"hint({name!r}, {level}): there are two levels of hints, 1 and 2.")
    _progress_of(name).hints_seen.add(level)
    print(f"exercise {exercise.number} ({name}), {exercise.title}, hint {level}: {exercise.hints[level - 1]}")


def solution_lines(name: str) -> list:
    """The lesson's own lines that exercise `name` blanks, read from the notebook the copy is made from."""
    exercise = ALL_EXERCISES[name]
    notebook = json.loads((REPO / exercise.exercise_set.notebook).read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        for mark in cell.get("metadata", {}).get("exercises", []):
            if mark["name"] == name:
                return textwrap.dedent("\n".join(mark["blank"])).split("\n")  # a loop keeps its body's indent
    raise KeyError(name)


def solution(name: str) -> None:
    """After both hints: print the lesson's own lines for the exercise."""
    exercise = ALL_EXERCISES[name]
    if not {1, 2} <= _progress_of(name).hints_seen:
        print(f"exercise {exercise.number} ({name}): the solution comes after the hints: hint({name!r}), then "
              f"hint({name!r}, 2)")
        return
    try:
        lines = solution_lines(name)
    except (OSError, KeyError, ValueError):
        print(f"exercise {exercise.number} ({name}): the solution is the lesson's own line, in "
              f"{exercise.exercise_set.notebook}")
        return
    print(f"exercise {exercise.number} ({name}), {exercise.exercise_set.notebook}'s own line{'s' * (len(lines) > 1)}:")
    print("\n".join(f"    {line}" for line in lines))


def not_attempted_line(name: str) -> str:
    """The line report(name) prints for a blank left as it is: the exercise notebook stores it."""
    return line_of(name, Verdict(NOT_ATTEMPTED))


@contextlib.contextmanager
def withheld(name: str):
    """Around a printout or a picture that shows the step's result: shown when the learner's answer is right, else
    withheld (under a blank or a wrong answer it would show the reference result, the answer). A picture is held
    back by holding matplotlib's show() until the end of the block and closing the block's figures when withheld."""
    printed = io.StringIO()
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures_before = set(pyplot.get_fignums()) if pyplot is not None else set()
    shows = []
    if pyplot is not None:
        real_show, pyplot.show = pyplot.show, lambda *args, **kwargs: shows.append((args, kwargs))
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        if pyplot is not None:
            pyplot.show = real_show
    new_figures = [number for number in pyplot.get_fignums() if number not in figures_before] if pyplot else []
    if _current(name).kind == CORRECT:
        print(printed.getvalue(), end="")
        for args, kwargs in shows:
            real_show(*args, **kwargs)
        return
    for number in new_figures:
        pyplot.close(number)
    exercise = ALL_EXERCISES[name]
    what = ("this printout and its picture are" if printed.getvalue() and new_figures
            else "this picture is" if new_figures else "this printout is")
    print(f"(exercise {exercise.number} ({name}): {what} withheld until your answer is right, since it would show "
          "the answer)")


def scoreboard(exercise_set: ExerciseSet = WALKTHROUGH, prediction: str = None) -> None:
    """Every exercise's line at once, then how many steps are the learner's own and what their code predicts."""
    verdicts = {name: _current(name) for name in exercise_set.exercises}
    for name, verdict in verdicts.items():
        print(line_of(name, verdict))
    mine = [name for name, verdict in verdicts.items() if verdict.kind == CORRECT]
    others = [f"{exercise_set.exercises[name].number} ({name})" for name in verdicts if name not in mine]
    total = len(verdicts)
    said = f"{len(mine)} of {total} steps are yours"
    if not others:
        print(f"{said}: your code predicts {prediction!r}" if prediction is not None else f"{said}.")
    else:
        print(f"{said}; still the reference's: {', '.join(others)}"
              + (f"; the prediction {prediction!r} used those" if prediction is not None else ""))


def sample_once(choose_token: callable, logits: torch.Tensor) -> None:
    """Call the notebook's choose_token once with sampling on (temperature 1 if the notebook's is 0) and a
    sampler of its own, so that the top-p line runs whatever LLAMA3_TEMPERATURE says; the notebook's
    temperature and sampler are left as they were."""
    namespace = choose_token.__globals__
    saved = {name: namespace[name] for name in ("temperature", "sampler")}
    namespace["temperature"] = saved["temperature"] or 1.0
    namespace["sampler"] = torch.Generator().manual_seed(0)
    try:
        choose_token(logits)
    finally:
        namespace.update(saved)


# ---------------------------------------------------------------- comparing tensors


def _is_tensor(answer, what: str):
    if isinstance(answer, torch.Tensor):
        return None
    kind = "None" if answer is None else f"a {type(answer).__name__}"
    return Verdict(WRONG, f"{what} should be a torch.Tensor, and yours is {kind}")


def _shape_dtype_device(answer, reference, what: str, axes: tuple = (), dtype_advice: str = ""):
    """A wrong type, shape (which axis), dtype or device, as a verdict; None when all agree."""
    problem = _is_tensor(answer, what)
    if problem:
        return problem
    if answer.dim() != reference.dim():
        named = f" ({', '.join(axes)})" if axes else ""
        return Verdict(WRONG, f"{what} has {answer.dim()} axes, shape {tuple(answer.shape)}, where it should have "
                              f"{reference.dim()}{named}")
    if answer.shape != reference.shape and answer.dim() == 2 and answer.shape == reference.shape[::-1]:
        return Verdict(WRONG, f"{what} is transposed: shape {tuple(answer.shape)}, where axis 0 should be the "
                              f"{axes[0] if axes else 'first'} axis")
    for axis, (mine, theirs) in enumerate(zip(answer.shape, reference.shape)):
        if mine != theirs:
            named = f" ({axes[axis]})" if axis < len(axes) else ""
            return Verdict(WRONG, f"{what} has the wrong shape {tuple(answer.shape)}: axis {axis} has {mine} entries "
                                  f"where it should have {theirs}{named}")
    if answer.dtype != reference.dtype:
        return Verdict(WRONG, f"{what} is {answer.dtype}, where the walkthrough's is {reference.dtype}{dtype_advice}")
    if answer.device != reference.device:
        return Verdict(WRONG, f"{what} is on {answer.device}, where the walkthrough's is on {reference.device}")
    return None


def _units_in_the_last_place(difference: float, truth: torch.Tensor, dtype: torch.dtype) -> str:
    units = math.ceil(difference / ulp(truth.abs().max().item(), dtype)) if difference > 0 else 0
    return "exactly" if units == 0 else f"to {units} unit{'s' * (units != 1)} in the last place of {dtype}"


def _close(answer: torch.Tensor, other: torch.Tensor, tolerance: float) -> bool:
    if answer.shape != other.shape:
        return False
    difference = (answer.to(TRUTH_DTYPE) - other.to(device=answer.device, dtype=TRUTH_DTYPE)).abs()
    if not difference.numel():
        return True
    finite = torch.isfinite(other.to(answer.device))
    same_infinity = (answer.to(TRUTH_DTYPE) == other.to(device=answer.device, dtype=TRUTH_DTYPE)) & ~finite
    difference = torch.where(same_infinity, torch.zeros_like(difference), difference)
    return bool(torch.nan_to_num(difference, nan=math.inf).max() <= tolerance)


def _own_scale(tolerance: float, truth: torch.Tensor, mistake: torch.Tensor, dtype, terms: int) -> float:
    """The tolerance for a mistake's values: the right answer's, grown with the mistake's own magnitude."""
    finite = mistake[torch.isfinite(mistake)]
    largest, truth_largest = (finite.abs().max().item() if finite.numel() else 0.0), truth.abs().max().item()
    grown = tolerance * max(1.0, largest / truth_largest) if truth_largest > 0 else tolerance
    return 2 * max(grown, rounding_floor(finite, dtype, terms) if finite.numel() else 0.0)


def _ranges(indices: list) -> str:
    """[0, 1, 2, 5] -> '0 to 2 and 5'."""
    parts, start = [], None
    for index, value in enumerate(indices):
        if start is None:
            start = value
        if index + 1 == len(indices) or indices[index + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start} to {value}")
            start = None
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _how_off(answer: torch.Tensor, truth: torch.Tensor, right: torch.Tensor, tolerance: float, what: str,
             axes: tuple) -> str:
    """Where and how a wrong answer is off, without its expected values; '' when nothing more can be said."""
    mine, truth = answer.to(TRUTH_DTYPE), truth.to(device=answer.device, dtype=TRUTH_DTYPE)
    finite = torch.isfinite(truth)
    if torch.isnan(mine).any() and not torch.isnan(truth).any():
        return f"{what} holds NaN at {int(torch.isnan(mine).sum())} of {mine.numel()} places"
    if finite.all() and torch.isfinite(mine).all() and truth.abs().max() > 0:
        factor = float((mine * truth).sum() / (truth * truth).sum())
        if abs(factor - 1) > 1e-3 and _close(mine, factor * truth, tolerance * max(1.0, abs(factor)) * 2):
            if abs(factor + 1) < 1e-2:
                return f"every value of {what} has the wrong sign"
            return f"every value of {what} is {factor:.3g} times what it should be: a constant factor is off"
    if mine.dim() >= 1 and mine.shape[0] > 2:
        if _close(mine[1:], truth[:-1], tolerance):
            return f"{what} is shifted one place later along axis 0 ({axes[0] if axes else 'rows'})"
        if _close(mine[:-1], truth[1:], tolerance):
            return f"{what} is shifted one place earlier along axis 0 ({axes[0] if axes else 'rows'})"
    if mine.dim() == 2 and mine.shape[0] == mine.shape[1] and mine.shape[0] > 1 and _close(mine, truth.T, tolerance):
        return f"{what} is transposed: rows and columns are swapped"
    if finite.all() and mine.numel() > 1 and _close(mine.flatten().sort().values, truth.flatten().sort().values,
                                                    tolerance):
        return f"{what} holds the right values, but in the wrong places"
    for axis in range(mine.dim()):
        if mine.shape[axis] < 2:
            continue
        per_slice = right.movedim(axis, 0).flatten(1).all(dim=1) if right.dim() > 1 else right
        good = per_slice.nonzero().flatten().tolist()
        if good and len(good) < len(per_slice):
            bad = (~per_slice).nonzero().flatten().tolist()
            name = axes[axis] if axis < len(axes) else f"axis {axis}"
            return f"along axis {axis} ({name}), entries {_ranges(good)} are right and {_ranges(bad)} are not"
    return ""


def _judge_values(answer, reference, truth, *, what, meaning, terms, axes=(), dtype_advice="", mistakes=(),
                  rows=None, dtype=None):
    """The verdict on a floating-point answer: right when within the rounding rule's tolerance of the truth.
    meaning: what is compared, with its verb ("your RMSNorm equals").
    mistakes: (function giving a typical mistake's result in float64, message), tried when the answer is wrong,
    each at its own scale.
    rows: what a wrong answer right only in row 0 probably did (row 0 is the first token, or the first layer)."""
    problem = _shape_dtype_device(answer, reference, what, axes, dtype_advice)
    if problem:
        return problem
    dtype = dtype or reference.dtype  # the dtype the result was computed in (bf16 logits are handed back as float32)
    truth = truth.to(reference.device)
    tolerance = rounding_tolerance(reference, truth, dtype, terms)
    error = (answer.to(TRUTH_DTYPE) - truth).abs()
    both_infinite = (answer.to(TRUTH_DTYPE) == truth) & ~torch.isfinite(truth)
    error = torch.where(both_infinite, torch.zeros_like(error), error)
    if torch.isnan(error).any():
        error = torch.nan_to_num(error, nan=math.inf)
    if error.numel() == 0 or error.max().item() <= tolerance:
        difference = error.max().item() if error.numel() else 0.0
        return Verdict(CORRECT, f"{meaning} the float64 truth {_units_in_the_last_place(difference, truth, dtype)}")
    for mistake, message in mistakes:
        try:
            theirs = mistake().to(reference.device)
        except (RuntimeError, ValueError):
            continue
        if _close(answer, theirs, _own_scale(tolerance, truth, theirs, dtype, terms)):
            return Verdict(WRONG, message)
    right = error <= tolerance
    if rows is not None and answer.dim() >= 2 and answer.shape[0] > 1:
        right_rows = right.flatten(1).all(dim=1)
        if right_rows[0] and not right_rows[1:].any():
            return Verdict(WRONG, f"row 0 is right, later rows are not: {rows}")
    how = _how_off(answer, truth, right, tolerance, what, axes[-answer.dim():] if answer.dim() else ())
    if how:
        return Verdict(WRONG, how)
    return Verdict(WRONG, f"{int(right.sum())} of {error.numel()} values are right; the largest difference from the "
                          f"truth, {error.max().item():.3g}, is more than rounding explains ({tolerance:.2g})")


def _judge_exact(answer, reference, *, what, meaning, axes=(), dtype_advice="", mistakes=()):
    problem = _shape_dtype_device(answer, reference, what, axes, dtype_advice)
    if problem:
        return problem
    if torch.equal(answer, reference):
        return Verdict(CORRECT, meaning)
    for mistake, message in mistakes:
        try:
            other = mistake()
        except Exception:  # noqa: BLE001 (a mistake that cannot be made on these inputs)
            continue
        if other.shape == answer.shape and torch.equal(answer, other.to(device=answer.device, dtype=answer.dtype)):
            return Verdict(WRONG, message)
    if answer.is_floating_point() and torch.isnan(answer).any():
        return Verdict(WRONG, f"{what} holds NaN (0 times -inf is NaN, say)")
    same = answer == reference
    if answer.is_floating_point() or answer.dtype == torch.bool:
        how = _how_off(answer.double() if answer.dtype == torch.bool else answer,
                       reference.double() if reference.dtype == torch.bool else reference, same, 0.0, what, axes)
        if how:
            return Verdict(WRONG, how)
    return Verdict(WRONG, f"{int(same.sum())} of {same.numel()} values are right")


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(TRUTH_DTYPE)


def _rms_normed(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


# ---------------------------------------------------------------- 1. the tokenizer


def _prompt_ids_reference(prompt_ids, bos_id, starts_with_bos, memory=None):
    return torch.tensor([bos_id] * starts_with_bos + list(prompt_ids))


@_exercise("prompt_ids", "the prompt's ids (with the checkpoint's BOS, if it has one)", (
    "tokens is a 1-dimensional torch.Tensor of ids: the ids of a special token that begins every text on checkpoints "
    "that have one (prompt_starts_with_bos says whether this one does), then prompt_ids.",
    "Build a Python list, [bos_id] once when prompt_starts_with_bos is True (a list times a bool repeats it once "
    "or not at all), followed by prompt_ids, and hand it to torch.tensor."), _prompt_ids_reference,
    minutes=3, difficulty=1)
def _prompt_ids(answer, *, prompt_ids, bos_id, starts_with_bos, memory=None):
    reference = _prompt_ids_reference(prompt_ids, bos_id, starts_with_bos)
    bos_said = "the special token that begins a text first" if starts_with_bos else "no special token first, as this checkpoint wants"
    if isinstance(answer, (list, tuple)) and [int(i) if isinstance(i, int) else i for i in answer] == reference.tolist():
        return Verdict(WRONG, f"the ids are right, but tokens is a Python {type(answer).__name__}: hand the list to "
                              "torch.tensor"), reference
    problem = _is_tensor(answer, "tokens")
    if problem is None and answer.dim() == 1 and answer.tolist() == reference.tolist() and answer.dtype != reference.dtype:
        problem = Verdict(WRONG, f"tokens is {answer.dtype}: ids are integers, {reference.dtype}")
    if problem is None:
        ids = answer.tolist() if answer.dim() == 1 else None
        prompt = list(prompt_ids)
        if ids == reference.tolist():
            return Verdict(CORRECT, f"the {len(ids)} ids are this checkpoint's, {bos_said}"), reference
        if ids == prompt and starts_with_bos:
            problem = Verdict(WRONG, "the ids start with the text's first token: on this checkpoint every prompt "
                                     "begins with a special token")
        elif ids == prompt + [bos_id]:
            problem = Verdict(WRONG, "the special token that begins a text is there, but at the end")
        elif ids == [bos_id] + prompt and not starts_with_bos:
            problem = Verdict(WRONG, "this checkpoint's prompts start without a special token "
                                     "(prompt_starts_with_bos is False)")
        elif ids is not None and len(ids) == len(reference) + 1 and ids[1:] == reference.tolist():
            problem = Verdict(WRONG, "one id too many at the start: the special token is there twice, or an extra id")
        elif ids is not None and ids == [bos_id] * starts_with_bos + prompt[::-1]:
            problem = Verdict(WRONG, "the prompt's ids are reversed")
        elif ids is not None and sorted(ids) == sorted(reference.tolist()):
            problem = Verdict(WRONG, "the right ids, in the wrong order")
        else:
            problem = _shape_dtype_device(answer, reference, "tokens", ("tokens",)) or Verdict(
                WRONG, f"{sum(a == b for a, b in zip(ids, reference.tolist()))} of {len(ids)} ids are right")
    return problem, reference


# ---------------------------------------------------------------- 2. the embedding


def _embedding_reference(embedding_table, tokens, device, dtype, memory=None):
    return embedding_table[tokens].to(device=device, dtype=dtype)


@_exercise("embedding", "the embedding lookup", (
    "Each token id picks one row of embedding_table; the result has one row per token, dim wide, on the compute "
    "device and in the compute dtype.",
    "Index the table with the whole tensor of ids at once (table[ids] gives [n_tokens, dim]), then "
    ".to(device=device, dtype=compute_dtype)."), _embedding_reference, minutes=3, difficulty=1)
def _embedding(answer, *, embedding_table, tokens, device, dtype, memory=None):
    reference = _embedding_reference(embedding_table, tokens, device, dtype)
    n_tokens = len(tokens)
    verdict = _judge_exact(
        answer, reference, what="token_embeddings", axes=("tokens", "dim"),
        meaning=f"each of the {n_tokens} rows is its token's row of the table",
        dtype_advice=f": convert the rows to the compute dtype, {dtype}",
        mistakes=[(lambda: embedding_table[:n_tokens].to(device=device, dtype=dtype),
                   "row i is the table's row i, not the row of the i-th token's id: index the table with the ids"),
                  (lambda: embedding_table[tokens + 1].to(device=device, dtype=dtype),
                   "each row is the row after its token's: the ids index the table as they are, from 0"),
                  (lambda: embedding_table[tokens.flip(0)].to(device=device, dtype=dtype),
                   "the rows are in reverse order: row i belongs to the i-th token")])
    return verdict, reference


# ---------------------------------------------------------------- 3. RMSNorm


def _rms_norm_reference(x_float, norm_eps, memory=None):
    return x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + norm_eps)


def _rms_norm_probes(x_float, norm_eps, memory=None):
    small = torch.linspace(-1.0, 1.0, x_float.shape[-1], dtype=x_float.dtype, device=x_float.device)
    return [("vectors whose mean square is about norm_eps", {"x_float": torch.stack([small, -small]) * math.sqrt(norm_eps)})]


@_exercise("rms_norm", "RMSNorm", (
    "Divide each token's vector (one row of x_float) by its root mean square: the square root of the mean of its "
    "squared coordinates, plus norm_eps inside the root.",
    "x_float.pow(2).mean(dim=-1, keepdim=True) is each row's mean square, kept as a column so that it broadcasts; "
    "torch.rsqrt gives 1 / sqrt(...) in one step."), _rms_norm_reference, probes=_rms_norm_probes, minutes=8,
    difficulty=2)
def _rms_norm(answer, *, x_float, norm_eps, memory=None):
    reference, x = _rms_norm_reference(x_float, norm_eps), _wide(x_float)
    mean_square = x.pow(2).mean(dim=-1, keepdim=True)
    verdict = _judge_values(
        answer, reference, _rms_normed(x, norm_eps), what="x_normed", meaning="your RMSNorm equals",
        terms=x.shape[-1], axes=("tokens", "dim"),
        mistakes=[(lambda: x * torch.rsqrt(x.pow(2).mean(dim=0, keepdim=True) + norm_eps),
                   "each vector is divided by a mean over the tokens (axis 0): RMSNorm takes each token's own mean, "
                   "over its coordinates"),
                  (lambda: x * torch.rsqrt(mean_square),
                   "close, but norm_eps is missing"),
                  (lambda: x / (mean_square + norm_eps),
                   "you divide by the mean square itself: RMSNorm divides by its square root"),
                  (lambda: x * torch.sqrt(mean_square + norm_eps),
                   "you multiply by the root mean square: RMSNorm divides by it (rsqrt is 1 / sqrt)"),
                  (lambda: x * torch.rsqrt(x.pow(2).sum(dim=-1, keepdim=True) + norm_eps),
                   "you divide by the root of the sum of squares: RMSNorm takes the mean (sum / dim) before the root"),
                  (lambda: x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True).mean() + norm_eps),
                   "every token is divided by one mean over all of them: RMSNorm takes each token's own mean "
                   "(keepdim=True on the last axis)"),
                  (lambda: (x - x.mean(dim=-1, keepdim=True)) * torch.rsqrt(
                      (x - x.mean(dim=-1, keepdim=True)).pow(2).mean(dim=-1, keepdim=True) + norm_eps),
                   "you subtract the mean first: that is LayerNorm; RMSNorm only divides by the root mean square")])
    return verdict, reference


# ---------------------------------------------------------------- 4. one head's weights


def _heads_reference(wq, wk, wv, n_heads, n_kv_heads, head_dim, memory=None):
    dim = wq.shape[1]
    return wq.view(n_heads, head_dim, dim), wk.view(n_kv_heads, head_dim, dim), wv.view(n_kv_heads, head_dim, dim)


def _parts(answer, count: int, names: tuple):
    """A verdict when answer is not a tuple of `count` parts; None when it is."""
    if isinstance(answer, (tuple, list)) and len(answer) == count:
        return None
    kind = f"{len(answer)} values" if isinstance(answer, (tuple, list)) else f"a {type(answer).__name__}"
    return Verdict(WRONG, f"{count} tensors are expected, {', '.join(names)}, and yours is {kind}")


@_exercise("heads", "unpacking the query, key and value weights head by head", (
    "wq stacks the query matrices of all heads along its rows: n_heads blocks of head_dim rows. wk and wv hold "
    "only n_kv_heads blocks.",
    "A view reshapes without copying: wq.view(heads, rows of one head, dim), with the numbers of heads and "
    "head_dim from params.json."), _heads_reference, parts=3, minutes=5, difficulty=1)
def _heads(answer, *, wq, wk, wv, n_heads, n_kv_heads, head_dim, memory=None):
    references = _heads_reference(wq, wk, wv, n_heads, n_kv_heads, head_dim)
    names = ("wq_per_head", "wk_per_kv_head", "wv_per_kv_head")
    problem = _parts(answer, 3, names)
    if problem:
        return problem, references
    swapped = {"wk_per_kv_head": references[2], "wv_per_kv_head": references[1]}
    for name, mine, reference, whole, heads in zip(names, answer, references, (wq, wk, wv),
                                                   (n_heads, n_kv_heads, n_kv_heads)):
        rows_last = whole.T.reshape(heads, head_dim, whole.shape[1]) if whole.shape[0] == heads * head_dim else whole
        interleaved = (whole.view(head_dim, heads, whole.shape[1]).transpose(0, 1)
                       if whole.shape[0] == heads * head_dim else whole)
        verdict = _judge_exact(mine, reference, what=name, axes=("heads", "head_dim", "dim"), meaning="",
                               mistakes=[(lambda rows_last=rows_last: rows_last,
                                          f"{name} cuts the heads from the wrong axis of the matrix: each head is a "
                                          "block of head_dim consecutive rows"),
                                         (lambda interleaved=interleaved: interleaved,
                                          f"{name} takes every {heads}-th row for a head: each head is a block of "
                                          "head_dim consecutive rows (view(heads, head_dim, dim))"),
                                         (lambda other=swapped.get(name): other,
                                          "the keys and the values are swapped: wk_per_kv_head comes from wk, "
                                          "wv_per_kv_head from wv")])
        if verdict.kind != CORRECT:
            if verdict.message.startswith(f"{name} has the wrong shape") and mine.shape[0] in (n_heads, n_kv_heads):
                verdict = Verdict(WRONG, f"{verdict.message}: {name} has one block per "
                                         f"{'query head (n_heads)' if heads == n_heads else 'key/value head (n_kv_heads)'}")
            return verdict, references
    return Verdict(CORRECT, "each head's rows are exactly those of wq, wk and wv"), references


# ---------------------------------------------------------------- 5. RoPE frequencies


def _rope_frequencies_reference(pair_index, rope_theta, head_dim, memory=None):
    return 1.0 / (rope_theta ** (pair_index / head_dim))


def _rope_frequencies_probes(pair_index, rope_theta, head_dim, memory=None):
    return [(f"head_dim {size} and rope_theta {theta:g}",
             {"pair_index": torch.arange(0, size, 2).to(pair_index.dtype), "rope_theta": theta, "head_dim": size})
            for size, theta in ((8, 10000.0), (24, 2.0 ** 17)) if size != head_dim]


@_exercise("rope_frequencies", "the RoPE frequencies", (
    "Pair i turns by rope_theta ** (-2i / head_dim) radians per position: 1 for the first pair, falling "
    "geometrically towards 1 / rope_theta.",
    "pair_index already holds 2i (0, 2, 4, ...): divide it by head_dim, raise rope_theta to that power, and "
    "take the reciprocal."), _rope_frequencies_reference, probes=_rope_frequencies_probes, minutes=5, difficulty=2)
def _rope_frequencies(answer, *, pair_index, rope_theta, head_dim, memory=None):
    reference, index = _rope_frequencies_reference(pair_index, rope_theta, head_dim), _wide(pair_index)
    half = torch.arange(len(index), dtype=TRUTH_DTYPE)
    verdict = _judge_values(
        answer, reference, 1.0 / (rope_theta ** (index / head_dim)), what="base_rope_frequencies",
        meaning="each frequency equals", terms=1, axes=("pairs",),
        mistakes=[(lambda: rope_theta ** (index / head_dim),
                   "your frequencies grow from pair to pair: the first pair turns fastest, the last slowest "
                   "(the reciprocal is missing)"),
                  (lambda: 1.0 / (rope_theta ** (2 * index / head_dim)),
                   "the exponent counts each pair twice: pair_index already steps by 2"),
                  (lambda: 1.0 / (rope_theta ** (half / head_dim)),
                   "the exponent counts pairs one by one: it is 2i / head_dim, and pair_index holds 2i"),
                  (lambda: 1.0 / (rope_theta ** (index / (head_dim // 2))),
                   "the exponent divides by head_dim / 2: it divides 2i by head_dim itself"),
                  (lambda: 1.0 / (rope_theta * (index / head_dim)),
                   "rope_theta is multiplied, not raised to the power: use **")])
    return verdict, reference


# ---------------------------------------------------------------- 6. the rotation, with complex numbers


def _rope_rotation_reference(q_per_token, rope_rotations, memory=None):
    n_tokens, head_dim = q_per_token.shape
    as_complex = torch.view_as_complex(q_per_token.float().view(n_tokens, -1, 2))
    rotated = torch.view_as_real(as_complex * rope_rotations).view(n_tokens, head_dim).type_as(q_per_token)
    return as_complex, rotated


def _rotated_wide(q: torch.Tensor, rotations: torch.Tensor, pairs: str = "neighbours", turn: str = "forward"):
    n_tokens, head_dim = q.shape
    q = _wide(q)
    if pairs == "neighbours":
        as_complex = torch.view_as_complex(q.reshape(n_tokens, -1, 2).contiguous())
    else:  # (x_i, x_{i + head_dim / 2}): the halves
        as_complex = torch.complex(q[:, :head_dim // 2], q[:, head_dim // 2:])
    rotations = rotations.to(torch.complex128)
    turned = as_complex * (rotations.conj() if turn == "backward" else rotations)
    return torch.view_as_real(turned).reshape(n_tokens, head_dim)


@_exercise("rope_rotation", "the rotation, with complex numbers", (
    "View each row of the queries as head_dim / 2 complex numbers, one per neighbouring pair (x0, x1), (x2, x3), "
    "...; multiply by the rotation of the row's position; view the product as real pairs again.",
    "torch.view_as_complex wants a float32 tensor whose last axis has 2 entries: q_per_token.float().view(n_tokens, "
    "-1, 2). rope_rotations is [n_tokens, head_dim / 2], one row per position, so a plain * lines them up. "
    "torch.view_as_real(...).view(n_tokens, head_dim) undoes the pairing, and .type_as(q_per_token) rounds back."),
    _rope_rotation_reference, parts=2, minutes=10, difficulty=3)
def _rope_rotation(answer, *, q_per_token, rope_rotations, memory=None):
    references = _rope_rotation_reference(q_per_token, rope_rotations)
    problem = _parts(answer, 2, ("q_per_token_as_complex", "q_per_token_rotated"))
    if problem:
        return problem, references
    as_complex, rotated = answer
    problem = _shape_dtype_device(as_complex, references[0], "q_per_token_as_complex", ("tokens", "pairs"),
                                  ": view_as_complex of float32 pairs gives complex64")
    if problem:
        return problem, references
    problem = _shape_dtype_device(rotated, references[1], "q_per_token_rotated", ("tokens", "head_dim"),
                                  ": round the rotated queries back with .type_as(q_per_token)")
    if problem:
        return problem, references
    truth = _rotated_wide(q_per_token, rope_rotations)
    tolerance = rounding_tolerance(references[1], truth, references[1].dtype, terms=2)
    if _close(rotated, _wide(q_per_token), tolerance) and not _close(truth, _wide(q_per_token), tolerance):
        return Verdict(WRONG, "q_per_token_rotated is q_per_token as it was: the rotation is not applied"), references
    wide = _wide(rotated)
    pair_lengths = wide.view(*wide.shape[:-1], -1, 2).pow(2).sum(-1)
    original_lengths = _wide(q_per_token).view(*wide.shape[:-1], -1, 2).pow(2).sum(-1)
    if not _close(pair_lengths.sqrt(), original_lengths.sqrt(), 2 * tolerance):
        if _close(wide, _rotated_wide(q_per_token, rope_rotations, pairs="halves"), 2 * tolerance):
            return Verdict(WRONG, "the pairs are (x_i, x_(i + head_dim/2)), the two halves: in Meta's layout the "
                                  "coordinates that form a complex number are neighbours (x0, x1), (x2, x3), ..."), references
        return Verdict(WRONG, "the neighbouring pairs (x0, x1), (x2, x3), ... changed length, so the rotation turned "
                              "other pairs: the coordinates that form a complex number are neighbours"), references
    verdict = _judge_values(
        rotated, references[1], truth, what="q_per_token_rotated", meaning="your rotated queries equal", terms=2,
        axes=("tokens", "head_dim"),
        mistakes=[(lambda: _rotated_wide(q_per_token, rope_rotations, turn="backward"),
                   "every pair turned the wrong way round: multiply by the rotations, not by their conjugates")],
        rows="is the rotation using each token's own position?")
    if verdict.kind == CORRECT and not torch.equal(as_complex, references[0]):
        verdict = Verdict(WRONG, "q_per_token_rotated is right, but q_per_token_as_complex is not the queries' "
                                 "neighbouring pairs as complex numbers")
    return verdict, references


# ---------------------------------------------------------------- 7. scores, 8. the causal mask, 9. softmax


def _scores_reference(q, k, head_dim, memory=None):
    return q @ k.T / math.sqrt(head_dim)


@_exercise("scores", "the scores, scaled by sqrt(head_dim)", (
    "Every query scores every key with a dot product, scaled so that the scores keep a unit scale whatever "
    "head_dim is: row = the query's token, column = the key's.",
    "One matrix product of the rotated queries [n_tokens, head_dim] with the transposed rotated keys, divided by "
    "math.sqrt(head_dim)."), _scores_reference, minutes=4, difficulty=1)
def _scores(answer, *, q, k, head_dim, memory=None):
    reference, q_wide, k_wide = _scores_reference(q, k, head_dim), _wide(q), _wide(k)
    verdict = _judge_values(
        answer, reference, q_wide @ k_wide.T / math.sqrt(head_dim), what="scores", meaning="your scores equal",
        terms=head_dim, axes=("queries", "keys"),
        mistakes=[(lambda: q_wide @ k_wide.T, "the scores are sqrt(head_dim) times too large: they are not scaled"),
                  (lambda: q_wide @ k_wide.T / head_dim, "the scores are divided by head_dim: the scale is its square root"),
                  (lambda: q_wide @ k_wide.T * math.sqrt(head_dim),
                   "the scores are multiplied by sqrt(head_dim): divide by it"),
                  (lambda: k_wide @ q_wide.T / math.sqrt(head_dim),
                   "rows and columns are swapped: a row is the query's token, a column the key's"),
                  (lambda: q_wide @ q_wide.T / math.sqrt(head_dim), "the queries score the queries: a query scores "
                                                                     "the keys (k_per_token_rotated)"),
                  (lambda: (q_wide * k_wide).sum(dim=-1) / math.sqrt(head_dim),
                   "one score per token: every query scores every key, a matrix product")])
    return verdict, reference


def _causal_mask_reference(n_tokens, device, dtype, memory=None):
    return torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=dtype).triu(diagonal=1)


def _causal_mask_probes(n_tokens, device, dtype, memory=None):
    return [(f"a prompt of {length} token{'s' * (length != 1)}", {"n_tokens": length})
            for length in (1, 3, 11) if length != n_tokens]


@_exercise("causal_mask", "the causal mask", (
    "A token may look at itself and at the tokens before it, never after: -inf where the key comes after the "
    "query, 0 elsewhere, in the compute dtype.",
    "torch.full((n, n), float('-inf'), device=device, dtype=compute_dtype) and .triu(diagonal=...): which "
    "diagonal is the first one to hide?"), _causal_mask_reference, probes=_causal_mask_probes, minutes=5,
    difficulty=2)
def _causal_mask(answer, *, n_tokens, device, dtype, memory=None):
    reference = _causal_mask_reference(n_tokens, device, dtype)
    full = torch.full((n_tokens, n_tokens), float("-inf"), device=device, dtype=dtype)
    later = torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=device).triu(diagonal=1)
    if isinstance(answer, torch.Tensor) and answer.dtype == torch.bool and answer.shape == reference.shape:
        said = "True where the key comes after the query" if torch.equal(answer, later) else "a mask of bools"
        return Verdict(WRONG, f"causal_mask is {said}: the mask is added to the scores, so it holds -inf where a "
                              "token may not look and 0 elsewhere"), reference
    if (isinstance(answer, torch.Tensor) and answer.shape == reference.shape and answer.is_floating_point()
            and torch.isfinite(answer).all() and bool((answer.to(reference.device)[later] < -1e3).all())
            and bool((answer.to(reference.device)[~later] == 0).all()) and later.any()):
        return Verdict(WRONG, "the hidden places hold a large negative number, not -inf: the walkthrough's mask "
                              "holds float('-inf'), whose exponential is exactly 0"), reference
    verdict = _judge_exact(
        answer, reference, what="causal_mask", axes=("queries", "keys"), dtype_advice=": the mask is added to "
        f"scores in the compute dtype, {dtype}", meaning="-inf exactly where the key comes after the query",
        mistakes=[(lambda: full.triu(diagonal=0), "the mask is off by one: it hides the diagonal too, and a token "
                                                  "may look at itself"),
                  (lambda: full.triu(diagonal=2), "the mask is off by one: each token can see the token right after it"),
                  (lambda: full.tril(diagonal=-1), "the mask hides the past instead of the future"),
                  (lambda: full.tril(diagonal=0), "the mask hides the past and the token itself instead of the future"),
                  (lambda: torch.zeros_like(full).masked_fill(later, 1.0),
                   "the mask holds 1 where the key comes after the query: it is added to the scores, so it needs "
                   "-inf there"),
                  (lambda: full.masked_fill(later, 0.0),
                   "0 and -inf are the wrong way round: -inf goes where the key comes after the query")])
    return verdict, reference


def _softmax_reference(masked_scores, memory=None):
    return torch.softmax(masked_scores.float(), dim=-1).type_as(masked_scores)


@_exercise("softmax", "the softmax", (
    "Each query's row of masked scores becomes probabilities that sum to 1: exponentiate, normalise. As Meta's "
    "code does, compute it in float32 and round back.",
    "torch.softmax(masked_scores.float(), dim=...) over the keys, one row per query, then .type_as(masked_scores)."),
    _softmax_reference, minutes=4, difficulty=1)
def _softmax(answer, *, masked_scores, memory=None):
    reference, wide = _softmax_reference(masked_scores), _wide(masked_scores)
    verdict = _judge_values(
        answer, reference, torch.softmax(wide, dim=-1), what="attention_weights", meaning="your attention weights equal",
        terms=masked_scores.shape[-1], axes=("queries", "keys"),
        dtype_advice=": round the float32 softmax back with .type_as(masked_scores)",
        mistakes=[(lambda: torch.softmax(wide, dim=0), "the columns sum to 1, not the rows: the softmax ran over the "
                                                       "wrong axis (axis 0, the queries)"),
                  (lambda: torch.softmax(torch.nan_to_num(wide, neginf=0.0), dim=-1),
                   "later tokens get weight: the mask's -inf did not reach the softmax"),
                  (lambda: torch.exp(wide), "the rows do not sum to 1: exponentiate, then divide by each row's sum"),
                  (lambda: torch.softmax(-wide, dim=-1).nan_to_num(0.0),
                   "the scores' sign is flipped: the largest score should get the largest weight"),
                  (lambda: torch.sigmoid(wide), "a sigmoid gives each score on its own: softmax normalises each row")])
    return verdict, reference


# ---------------------------------------------------------------- 10. grouped-query attention


def _kv_head_reference(head, heads_per_kv_head, n_kv_heads, n_heads=None, memory=None):
    return head // heads_per_kv_head


def _kv_head_summary(verdicts) -> Verdict:
    if any(verdict.kind == NOT_ATTEMPTED for verdict in verdicts):
        return next(verdict for verdict in verdicts if verdict.kind == NOT_ATTEMPTED)
    wrong = [verdict for verdict in verdicts if verdict.kind == WRONG]
    if not wrong:
        return Verdict(CORRECT, f"every one of the {len(verdicts)} query heads reads its group's key/value head")
    own = [verdict for verdict in wrong if not verdict.message.startswith("right on this checkpoint")]
    if not own:  # every head of this checkpoint is right: a configuration of the check's own told the rule apart
        return wrong[0]
    messages = [verdict.message for verdict in own]
    commonest = max(messages, key=lambda message: (messages.count(message), "does not exist" in message))
    return Verdict(WRONG, f"{len(verdicts) - len(own)} of {len(verdicts)} query heads read the right key/value "
                          f"head; {commonest}")


def _kv_head_probes(head, heads_per_kv_head, n_kv_heads, n_heads=None, memory=None):
    if head != 0:  # once per loop over the heads
        return []
    configurations = [(n, kv) for n, kv in ((8, 2), (12, 4), (4, 4), (6, 1)) if (n_heads, n_kv_heads) != (n, kv)]
    return [(f"{n} query heads sharing {kv} key/value head{'s' * (kv != 1)} (query head {h})",
             {"head": h, "heads_per_kv_head": n // kv, "n_kv_heads": kv, "n_heads": n})
            for n, kv in configurations for h in range(n)]


@_exercise("kv_head", "which key/value head a query head reads (GQA)", (
    "Consecutive query heads form groups of heads_per_kv_head, and each group shares one key/value head.",
    "Query heads 0 .. heads_per_kv_head - 1 read key/value head 0, the next heads_per_kv_head read head 1: "
    "integer division."), _kv_head_reference, summarize=_kv_head_summary, probes=_kv_head_probes, minutes=5,
    difficulty=2)
def _kv_head(answer, *, head, heads_per_kv_head, n_kv_heads, n_heads=None, memory=None):
    reference = _kv_head_reference(head, heads_per_kv_head, n_kv_heads)
    n_heads = n_heads or heads_per_kv_head * n_kv_heads
    if isinstance(answer, torch.Tensor) and answer.numel() == 1 and not answer.is_floating_point():
        answer = int(answer)
    if isinstance(answer, float) or (isinstance(answer, torch.Tensor) and answer.is_floating_point()):
        return Verdict(WRONG, f"kv_head_for_this_head is a float ({type(answer).__name__}): a head's index is an "
                              "int, so divide with //"), reference
    if isinstance(answer, bool) or not isinstance(answer, int):
        kind = "None" if answer is None else f"a {type(answer).__name__}"
        return Verdict(WRONG, f"kv_head_for_this_head should be an int, and yours is {kind}"), reference
    if answer == reference:
        return Verdict(CORRECT), reference
    off_by_one = answer - reference in (1, -1)
    if not 0 <= answer < n_kv_heads:
        return Verdict(WRONG, f"some query heads read a key/value head that does not exist: there are only "
                              f"{n_kv_heads} (0 to {n_kv_heads - 1})"), reference
    if answer == head % n_kv_heads:
        return Verdict(WRONG, "the query heads take turns over the key/value heads (head % n_kv_heads): in grouped-"
                              "query attention consecutive query heads share one"), reference
    if answer == head // n_kv_heads:
        return Verdict(WRONG, "you divide by n_kv_heads: a group holds heads_per_kv_head query heads, so divide by "
                              "that"), reference
    if answer == head % heads_per_kv_head:
        return Verdict(WRONG, "head % heads_per_kv_head is the head's place inside its group, not the group"), reference
    if off_by_one:
        return Verdict(WRONG, "the query heads read the key/value head next to their group's: off by one"), reference
    return Verdict(WRONG, f"query head {head} reads key/value head {answer}, which is not its group's"), reference


# ---------------------------------------------------------------- 11. and 13. the residual additions


def _residual_reference(residual, branch, memory=None):
    return residual + branch


def _branch_scale(answer, residual, branch):
    """The factor c for which answer is closest to residual + c * branch (least squares, float64), when the answer
    is a floating-point tensor of the stream's shape and c is neither about 0 nor about 1; else None."""
    if (not isinstance(answer, torch.Tensor) or answer.shape != residual.shape or not answer.is_floating_point()
            or answer.device != residual.device):
        return None
    added, branch_wide = _wide(answer) - _wide(residual), _wide(branch)
    power = (branch_wide * branch_wide).sum().item()
    scale = (added * branch_wide).sum().item() / power if power > 0 else math.nan
    if not math.isfinite(scale) or abs(scale) < 0.05 or abs(scale - 1) < 0.05:
        return None
    return scale


def _judge_residual(answer, residual, branch, what: str, branch_name: str, residual_name: str, layer_input=None):
    reference = _residual_reference(residual, branch)
    mistakes = [(lambda: _wide(branch), f"this is {branch_name} alone: the residual connection is missing (the "
                                        "branch's result is added to the stream it read)"),
                (lambda: _wide(residual), f"{branch_name} is missing: this is the stream the branch read"),
                (lambda: _wide(residual) - _wide(branch), f"{branch_name} is subtracted: the branch is added"),
                (lambda: _wide(residual) * _wide(branch), f"{branch_name} and the stream are multiplied: the "
                                                          "branch is added"),
                (lambda: 2 * _wide(branch) + _wide(residual), f"{branch_name} is added twice")]
    if layer_input is not None:
        mistakes.append((lambda: _wide(layer_input) + _wide(branch),
                         f"{branch_name} is added to the layer's input, token_embeddings, which has not been through "
                         f"the attention yet: add it to the stream the branch read, {residual_name}"))
    scale = _branch_scale(answer, residual, branch)
    if scale is not None:
        mistakes.append((lambda: _wide(residual) + scale * _wide(branch),
                         f"{branch_name} is multiplied by {scale:.2g} before it is added: the branch is added as "
                         "it is"))
    verdict = _judge_values(answer, reference, _wide(residual) + _wide(branch), what=what,
                            meaning=f"your {what} equals", terms=2, axes=("tokens", "dim"), mistakes=mistakes)
    return verdict, reference


@_exercise("attention_residual", "the attention's residual addition", (
    "The attention does not replace the residual stream: its output is added to what the layer read.",
    "The layer read token_embeddings; add attention_output to it."), _residual_reference, minutes=2, difficulty=1)
def _attention_residual(answer, *, residual, branch, memory=None):
    return _judge_residual(answer, residual, branch, "after_attention", "the attention's output", "token_embeddings")


# ---------------------------------------------------------------- 12. SwiGLU


def _swiglu_reference(ffn_input, w1, w2, w3, memory=None):
    gate = torch.nn.functional.silu(ffn_input @ w1.T)
    up = ffn_input @ w3.T
    return gate, up, (gate * up) @ w2.T


@_exercise("swiglu", "the SwiGLU feed-forward network", (
    "Two projections up to ffn_dim, one of them passed through SiLU to gate the other coordinate by coordinate, "
    "then one projection down: w2( silu(w1 x) * w3 x ).",
    "gate = silu(ffn_input @ w1.T) and up = ffn_input @ w3.T, both [n_tokens, ffn_dim]; ffn_output = "
    "(gate * up) @ w2.T, [n_tokens, dim]. weight(name) gives each matrix."), _swiglu_reference, parts=3,
    minutes=8, difficulty=2)
def _swiglu(answer, *, ffn_input, w1, w2, w3, memory=None):
    references = _swiglu_reference(ffn_input, w1, w2, w3)
    problem = _parts(answer, 3, ("gate", "up", "ffn_output"))
    if problem:
        return problem, references
    silu = torch.nn.functional.silu
    x, w1_wide, w3_wide, w2_wide = _wide(ffn_input), _wide(w1), _wide(w3), _wide(w2)
    up_projection, gate_projection = x @ w3_wide.T, x @ w1_wide.T
    for name, mine, reference in zip(("gate", "up"), answer[:2], references[:2]):
        problem = _shape_dtype_device(mine, reference, name, ("tokens", "ffn_dim"))
        if problem:
            return problem, references
    terms = w1.shape[0] + w1.shape[1]
    verdict = _judge_values(
        answer[2], references[2], (silu(gate_projection) * up_projection) @ w2_wide.T, what="ffn_output",
        meaning="your feed-forward output equals", terms=terms, axes=("tokens", "dim"),
        mistakes=[(lambda: (silu(up_projection) * gate_projection) @ w2_wide.T,
                   "gate and up are swapped: the SiLU is on the wrong projection (in Meta's naming w1 gates, w3 "
                   "goes up)"),
                  (lambda: (gate_projection * up_projection) @ w2_wide.T, "the gate has no SiLU"),
                  (lambda: silu((gate_projection * up_projection) @ w2_wide.T),
                   "the SiLU is on the output: it goes on the gate, before the product"),
                  (lambda: (torch.relu(gate_projection) * up_projection) @ w2_wide.T,
                   "the gate goes through a ReLU: Llama 3's gate is SiLU (x * sigmoid(x))"),
                  (lambda: (torch.sigmoid(gate_projection) * up_projection) @ w2_wide.T,
                   "the gate goes through a sigmoid: SiLU is x * sigmoid(x)"),
                  (lambda: (silu(gate_projection) + up_projection) @ w2_wide.T,
                   "gate and up are added: the gate multiplies up coordinate by coordinate")])
    if verdict.kind == CORRECT:
        for index, (name, truth) in enumerate((("gate", silu(gate_projection)), ("up", up_projection))):
            check_part = _judge_values(answer[index], references[index], truth, what=name, meaning="",
                                       terms=w1.shape[1], axes=("tokens", "ffn_dim"))
            if check_part.kind != CORRECT:
                return Verdict(WRONG, f"ffn_output is right, but {name} is not: {check_part.message}"), references
    return verdict, references


def _layer_output_reference(residual, branch, layer_input=None, memory=None):
    return _residual_reference(residual, branch)


@_exercise("layer_output", "the feed-forward network's residual addition: one whole layer", (
    "Like the attention's, the feed-forward network's output is added to the stream it read: after_attention.",
    "layer0_output = the stream after attention plus ffn_output."), _layer_output_reference, minutes=2, difficulty=1)
def _layer_output(answer, *, residual, branch, layer_input=None, memory=None):
    return _judge_residual(answer, residual, branch, "layer0_output", "the feed-forward network's output",
                           "after_attention", layer_input=layer_input)


# ---------------------------------------------------------------- 14. the layer loop


def _layer_loop_reference(layer, first_input, layer_function, memory):
    layer_input = first_input if layer == 0 else memory["output"]
    memory["output"] = layer_function(layer_input, layer)
    return memory["output"]


def _layer_loop_summary(verdicts) -> Verdict:
    if any(verdict.kind == NOT_ATTEMPTED for verdict in verdicts):
        return next(verdict for verdict in verdicts if verdict.kind == NOT_ATTEMPTED)
    wrong = [index for index, verdict in enumerate(verdicts) if verdict.kind == WRONG]
    if not wrong:
        return Verdict(CORRECT, f"each of the {len(verdicts)} layers gives exactly transformer_layer(its input, layer)")
    if wrong[0] > 0:
        return Verdict(WRONG, f"layers 0 to {wrong[0] - 1} are right, later layers are not: {verdicts[wrong[0]].message}")
    return verdicts[0]


@_exercise("layer_loop", "the loop over every layer", (
    "Each layer reads the residual stream that the layer before it wrote, and uses its own weights.",
    "Inside the loop, hand the stream and the layer's number to transformer_layer, and keep what it returns as "
    "the new stream."), _layer_loop_reference, summarize=_layer_loop_summary, minutes=4, difficulty=1)
def _layer_loop(answer, *, layer, first_input, layer_function, memory):
    layer_input = first_input if layer == 0 else memory["output"]
    reference = _layer_loop_reference(layer, first_input, layer_function, memory)
    verdict = _judge_exact(
        answer, reference, what="hidden", axes=("tokens", "dim"), meaning="",
        mistakes=[(lambda: layer_function(first_input, layer),
                   f"layer {layer} read the embeddings, not the output of layer {layer - 1}"),
                  (lambda: layer_function(layer_input, 0), f"layer {layer} ran with the weights of layer 0"),
                  (lambda: layer_function(layer_input, layer + 1),
                   f"layer {layer} ran with the weights of layer {layer + 1}: the layer's number counts from 0"),
                  (lambda: layer_input, f"layer {layer} left the stream as it was: hidden is transformer_layer's result"),
                  (lambda: layer_input + reference, f"layer {layer}'s output is added to its input: transformer_layer "
                                                    "adds its residuals itself, so keep what it returns")])
    return verdict, reference


# ---------------------------------------------------------------- 15. the logits


def _logits_reference(last_hidden, norm_weight, output_weight, norm_eps, memory=None):
    x = last_hidden.float()
    normed = (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + norm_eps)).type_as(last_hidden) * norm_weight
    return (normed @ output_weight.T).float().cpu()


def _logits_truth(last_hidden, norm_weight, output_weight, norm_eps, normed: bool = True,
                  weighted: bool = True) -> torch.Tensor:
    """The float64 logits, the output matrix converted a block of rows at a time (0.27 GB at the 8B's width)."""
    x = _wide(last_hidden)
    if normed:
        x = _rms_normed(x, norm_eps) * (_wide(norm_weight) if weighted else 1.0)
    blocks = [x @ _wide(output_weight[start:start + TRUTH_ROWS_PER_CHUNK]).T
              for start in range(0, output_weight.shape[0], TRUTH_ROWS_PER_CHUNK)]
    return torch.cat(blocks, dim=-1).cpu()


@_exercise("logits", "the logits", (
    "Before the output projection, the residual stream goes through one last RMSNorm (its weight is "
    "norm.weight); the projection gives one score per token of the vocabulary, as float32 on the CPU.",
    "rms_norm(last_hidden, weight('norm.weight')) @ weight(output_weight_name).T, then .float().cpu(). On a "
    "checkpoint with a tied output, output_weight_name names the embedding table."),
    _logits_reference, minutes=5, difficulty=2)
def _logits(answer, *, last_hidden, norm_weight, output_weight, norm_eps, memory=None):
    reference = _logits_reference(last_hidden, norm_weight, output_weight, norm_eps)
    truth = _logits_truth(last_hidden, norm_weight, output_weight, norm_eps)
    verdict = _judge_values(
        answer, reference, truth,
        what="the logits", meaning="your logits equal", terms=last_hidden.shape[-1], axes=("positions", "vocabulary"),
        dtype_advice=": the walkthrough hands back float32 logits (.float())",
        dtype=output_weight.dtype,
        mistakes=[(lambda: _logits_truth(last_hidden, norm_weight, output_weight, norm_eps, normed=False),
                   "the final RMSNorm is missing"),
                  (lambda: _logits_truth(last_hidden, norm_weight, output_weight, norm_eps, weighted=False),
                   "the final RMSNorm has no weight: multiply by norm.weight"),
                  (lambda: torch.softmax(truth, dim=-1), "these are probabilities (a softmax): the logits are the "
                                                         "scores before it")])
    return verdict, reference


# ---------------------------------------------------------------- 16. the KV cache


CACHE_NAMES = ("keys", "values")


def _kv_cache_snapshot(inputs):
    """The cache before the learner's line: all of it when it is small (up to SNAPSHOT_BYTES a tensor), else this
    layer's part; and the cache's own tensors."""
    cache, layer = inputs.get("kv_cache"), inputs.get("layer")
    if not isinstance(cache, dict):
        return None
    tensors = {name: cache[name] for name in CACHE_NAMES if isinstance(cache.get(name), torch.Tensor)}
    whole = all(tensor.numel() * tensor.element_size() <= SNAPSHOT_BYTES for tensor in tensors.values())
    return {name: (tensor, tensor.clone() if whole else tensor[layer].clone(), whole) for name, tensor in tensors.items()}


def _kv_cache_reference(kv_cache, layer, start_position, keys, values, memory=None):
    """The cache as the walkthrough leaves it: as it was before the learner's line (its own tensors put back),
    with the new keys and values written at their positions in this layer."""
    saved = (memory or {}).get("saved")
    if saved:
        for name, (tensor, before, whole) in saved.items():
            kv_cache[name] = tensor
            if whole:
                tensor.copy_(before)
            else:
                tensor[layer] = before
    end_position = start_position + keys.shape[0]
    kv_cache["keys"][layer, start_position:end_position] = keys
    kv_cache["values"][layer, start_position:end_position] = values
    return kv_cache


@_exercise("kv_cache", "writing the KV cache", (
    "The new tokens sit at positions start_position, start_position + 1, ...: their keys and values go into "
    "this layer's part of the cache at exactly those positions.",
    "kv_cache['keys'] is [n_layers, positions, n_kv_heads, head_dim]: assign k to "
    "kv_cache['keys'][layer, start_position:end_position], and v likewise."), _kv_cache_reference,
    unchecked="generation has not run yet: the check speaks after the cell that generates", answer_is="kv_cache",
    snapshot=_kv_cache_snapshot, minutes=6, difficulty=2)
def _kv_cache(answer, *, kv_cache, layer, start_position, keys, values, memory=None):
    saved = (memory or {}).get("saved")

    def wrong(message):
        return Verdict(WRONG, message), _kv_cache_reference(kv_cache, layer, start_position, keys, values, memory)

    if not isinstance(answer, dict) or not all(isinstance(answer.get(name), torch.Tensor) for name in CACHE_NAMES):
        kind = "None" if answer is None else f"a {type(answer).__name__}"
        return wrong(f"kv_cache should stay the dict that new_kv_cache made, with the tensors 'keys' and 'values'; "
                     f"yours is {kind}" + (" without them" if isinstance(answer, dict) else ""))
    if answer is not kv_cache:
        return wrong("kv_cache is a new dict: write into the cache that the layer was given")
    if saved and any(answer[name] is not saved[name][0] for name in saved):
        replaced = next(name for name in saved if answer[name] is not saved[name][0])
        return wrong(f"kv_cache[{replaced!r}] is a new tensor: write into the cache's own tensor (assign to a slice "
                     f"of it), so that the keys and values of the positions before stay there")
    end_position = start_position + keys.shape[0]
    if any(answer[name].shape != saved[name][0].shape for name in saved) if saved else False:
        return wrong("the cache's tensors changed shape: write into a slice of them")
    written = {name: answer[name][layer] for name in CACHE_NAMES}
    new = {"keys": keys, "values": values}
    before = ({name: saved[name][1][layer] if saved[name][2] else saved[name][1] for name in CACHE_NAMES}
              if saved else None)
    other_layers = []  # the layers other than this one whose part the line changed (when the whole cache was kept)
    if saved and all(saved[name][2] for name in CACHE_NAMES):
        for name in CACHE_NAMES:
            changed = (answer[name] != saved[name][1]).flatten(1).any(dim=1)
            changed[layer] = False
            other_layers += changed.nonzero().flatten().tolist()
        other_layers = sorted(set(other_layers))

    def cache_with(placed: dict) -> dict:
        """This layer's part as it would be with `placed` (name -> (start, tensor)) written into it."""
        result = {}
        for name in CACHE_NAMES:
            result[name] = (before[name] if before is not None else written[name]).clone()
            start, tensor = placed.get(name, (None, None))
            if tensor is not None and start + tensor.shape[0] <= result[name].shape[0]:
                result[name][start:start + tensor.shape[0]] = tensor
        return result

    def matches(candidate: dict) -> bool:
        return all(candidate[name].shape == written[name].shape and torch.equal(candidate[name], written[name])
                   for name in CACHE_NAMES)

    right = cache_with({name: (start_position, new[name]) for name in CACHE_NAMES})
    if before is None:  # no snapshot: only the new positions can be compared
        right_here = all(torch.equal(written[name][start_position:end_position], new[name]) for name in CACHE_NAMES)
    else:
        right_here = matches(right)
    if right_here and not other_layers:
        return Verdict(CORRECT, "every key and value sits at its position, in its layer"), answer
    if right_here:
        return wrong(f"this layer's keys and values are in place, but the part of layer {_ranges(other_layers)} "
                     "changed too")
    if other_layers and matches(cache_with({})):
        return wrong(f"the keys and values went into the part of layer {_ranges(other_layers)}: the cache's first "
                     f"axis is the layer, and this is layer {layer}")
    if before is not None and matches(cache_with({})) and (keys.any() or values.any()):
        return Verdict(NOT_ATTEMPTED), _kv_cache_reference(kv_cache, layer, start_position, keys, values, memory)
    if before is not None:
        mistakes = [
            ({"keys": (start_position, values), "values": (start_position, keys)},
             "the keys are where the values belong, and the values where the keys belong"),
            ({name: (start_position + 1, new[name]) for name in CACHE_NAMES},
             "the new keys and values sit one position later than the tokens they belong to"),
            ({name: (0, new[name]) for name in CACHE_NAMES},
             f"the new keys and values are written from position 0: these tokens start at position {start_position}"),
            ({"keys": (start_position, keys)}, "the keys are written, the values are not"),
            ({"values": (start_position, values)}, "the values are written, the keys are not"),
        ]
        for placed, message in mistakes:
            if placed != {} and matches(cache_with(placed)):
                return wrong(message)
        if all(torch.equal(written[name][start_position:end_position], new[name]) for name in CACHE_NAMES):
            changed = [position for position in range(written["keys"].shape[0])
                       if not start_position <= position < end_position
                       and not all(torch.equal(written[name][position], before[name][position]) for name in CACHE_NAMES)]
            return wrong(f"the new keys and values are in place, but positions {_ranges(changed)} changed too: "
                         f"write positions {start_position} to {end_position - 1} only")
    return wrong(f"the cache does not hold this layer's new keys and values at positions {start_position} to "
                 f"{end_position - 1}")


# ---------------------------------------------------------------- 17. the stop tokens


def _stop_tokens_reference(own_tokenizer=False, memory=None):
    return LLAMA3_STOP_TOKENS


@_exercise("stop_tokens", "Meta's stop tokens", (
    "With Meta's tokenizer, generation ends where a model's text can end: the end of a whole text, the end of a "
    "chat turn, and the end of a message that hands over to a tool. Name them as NAMED_SPECIAL_TOKENS does.",
    "Three of the names in NAMED_SPECIAL_TOKENS: one ends a text, one ends a turn (eot), one ends a message (eom)."),
    _stop_tokens_reference, minutes=3, difficulty=1)
def _stop_tokens(answer, own_tokenizer=False, memory=None):
    from llama3_support.vocabulary import NAMED_SPECIAL_TOKENS

    reference = _stop_tokens_reference()
    if isinstance(answer, str) or not isinstance(answer, (tuple, list, set, frozenset)) \
            or not all(isinstance(name, str) for name in answer):
        kind = "None" if answer is None else f"a {type(answer).__name__}"
        return Verdict(WRONG, f"give the special tokens' names, a tuple of strings such as '<|begin_of_text|>'; "
                              f"yours is {kind}"), reference
    mine, meta = set(answer), set(reference)
    whose = ("; this checkpoint's own tokenizer ends at its own tokens (the lesson stops there), so these names "
             "serve with Meta's tokenizer") if own_tokenizer else ""
    if mine == meta:
        return Verdict(CORRECT, f"the {len(meta)} stop tokens of Meta's tokenizer{whose}"), reference
    unknown = sorted(name for name in mine if name not in NAMED_SPECIAL_TOKENS)
    if unknown:
        return Verdict(WRONG, f"{unknown[0]!r} is not one of Meta's special tokens: spell each name as "
                              "NAMED_SPECIAL_TOKENS does"), reference
    extra, missing = sorted(mine - meta), meta - mine
    if "<|begin_of_text|>" in extra:
        return Verdict(WRONG, "<|begin_of_text|> begins a text: it never ends one"), reference
    if extra:
        return Verdict(WRONG, f"{extra[0]} does not end generation in Meta's code"), reference
    ends = {"<|end_of_text|>": "a whole text", "<|eot_id|>": "a chat turn", "<|eom_id|>": "a message that calls a tool"}
    return Verdict(WRONG, f"{len(missing)} of Meta's {len(meta)} stop tokens {'is' if len(missing) == 1 else 'are'} "
                          f"missing: the end of {' and of '.join(ends[name] for name in sorted(missing))}"), reference


# ---------------------------------------------------------------- 18. top-p sampling


def _top_p_reference(sorted_probabilities, top_p, memory=None):
    return sorted_probabilities.cumsum(dim=-1) - sorted_probabilities > top_p


def _top_p_probes(sorted_probabilities, top_p, memory=None):
    dtype = sorted_probabilities.dtype
    return [(f"probabilities {values} and top_p {p}", {"sorted_probabilities": torch.tensor(values, dtype=dtype),
                                                       "top_p": p})
            for values, p in (([0.5, 0.25, 0.125, 0.125], 0.75), ([0.4, 0.3, 0.2, 0.1], 0.65),
                              ([0.5, 0.25, 0.125, 0.125], 0.3))]


@_exercise("top_p", "top-p sampling: the nucleus", (
    "The nucleus is the smallest set of the most likely tokens whose probabilities add up to top_p; "
    "outside_nucleus is True for every other token.",
    "The probabilities are sorted, largest first: a token is outside when the probabilities before it already "
    "add up to more than top_p (cumsum minus its own)."), _top_p_reference,
    unchecked="choose_token has not sampled yet", probes=_top_p_probes, minutes=8, difficulty=3)
def _top_p(answer, *, sorted_probabilities, top_p, memory=None):
    reference = _top_p_reference(sorted_probabilities, top_p)
    cumulative = sorted_probabilities.cumsum(dim=-1)
    before = cumulative - sorted_probabilities
    verdict = _judge_exact(
        answer, reference, what="outside_nucleus", axes=("vocabulary",), dtype_advice=": a mask of bools",
        meaning=f"the nucleus keeps {int((~reference).sum())} tokens, exactly the reference's",
        mistakes=[(lambda: before >= top_p, "a token whose predecessors add up to exactly top_p is dropped: the "
                                            "nucleus ends where the sum is more than top_p (>)"),
                  (lambda: cumulative > top_p, "the token that carries the sum past top_p is left out of the "
                                              "nucleus: the nucleus reaches top_p, so it includes that token"),
                  (lambda: before <= top_p,
                   "your mask marks the tokens inside the nucleus: it should be True for the tokens to drop"),
                  (lambda: sorted_probabilities < top_p, "each token's own probability is compared with top_p: "
                                                         "the nucleus is about the running sum (cumsum)"),
                  (lambda: cumulative < top_p, "your mask marks the tokens inside the nucleus, and leaves out the one "
                                               "that reaches top_p: it should be True for the tokens to drop")])
    return verdict, reference
