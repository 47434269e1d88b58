"""Write an exercise copy of a lesson notebook, with blanks for the learner, from the lesson itself.

    python tests/make_exercises.py                  # write every lesson's copy (the walkthrough's, the training's)
    python tests/make_exercises.py --check          # exit 1 if a committed copy is not what this writes
    python tests/make_exercises.py --solutions DIR  # also write each copy with every blank filled in, into DIR
    python tests/make_exercises.py --lesson training  # one lesson's copy only

The exercise copy is never edited by hand. A lesson cell holds its exercises in its metadata, so that its
visible source stays as it is:

    "exercises": [{"name": "rms_norm",                        # a name in the lesson's ExerciseSet
                   "blank": ["    x_normed = x_float * ..."],  # consecutive lines of the cell, exactly
                   "check": "x_normed = check(\"rms_norm\", x_normed, x_float=x_float, norm_eps=norm_eps)",
                   "answer": "position_logits",                # for a blank `return ...`: the name it gets
                   "report_after": "61137d0f",                 # the report after that cell, not this one
                   "report": "report(\"top_p\", probe=...)"}]  # a report of its own
    # "withhold": ["3fa866d5"]: later cells that show the step's result (a picture of it), in the copy inside
    #   `with withheld(name):`, shown once the answer is right

In the copy the blank lines go into a block that takes the check's inputs before the learner's line runs:

    with exercise("rms_norm", x_float=x_float, norm_eps=norm_eps) as x_normed:
        x_normed = ...  # exercise 3 (rms_norm): your code
    x_normed = check("rms_norm", x_normed)

(`...` alone for a line that assigns into a tensor; a blank that is one block, a `for` or `while` loop with
its body, becomes one `...` line in the `with` block, the check's answer a name the cell bound before it). The printouts that follow the check in its cell are shown
only once the answer is right (`with withheld(name):`), and a cell with a blank stores no output, so that
nothing in the copy gives an answer away. A code cell after the cell (or after report_after) reports one line
per exercise; the last cell is the scoreboard. The lesson's other stored outputs are the lesson's; a report cell
stores the line a blank gives, "not attempted yet". The copy opens with the workshop's pre-flight check (stored
empty) and the imports.

Each lesson with exercises is one Lesson below: its notebook, its copy, its intro, imports and last cells.
"""

import argparse
import ast
import copy
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llama3_support import exercises as checks  # noqa: E402
from llama3_support.exercises import not_attempted_line  # noqa: E402
from llama3_support.training_exercises import TRAINING_SET  # noqa: E402
from refresh_stored_outputs import NOTE_KEY  # noqa: E402  (the walkthrough's cell about its stored outputs)

METADATA_KEY = "exercises"
IGNORE_MARKER = "# NBVAL_IGNORE_OUTPUT"

INTRO = """# Llama 3 from scratch: exercises

The walkthrough, `llama3_from_scratch.ipynb`, with {count} of its steps left for you to write. Where a line reads
`name = ...  # exercise N (name): your code`, replace the `...` with your code and run the cell. The block around
your line (`with exercise(...)`) takes the step's inputs before your line runs; the line after it hands your answer
to `check`, and the cell after the exercise prints one line:

- `not attempted yet`: the blank is still there;
- `correct`, with what the number means: how close your result is to the truth computed in float64 from the same
  inputs, in units in the last place. From then on the lesson goes on with your own result;
- `wrong`, with what is wrong: the shape (which axis), the dtype, the positions or heads that are off, or a typical
  mistake recognised; if your line raised an error, which one. It never shows the expected values, and a cell's
  printout of the step's result is withheld until your answer is right.

Stuck? `hint("rms_norm")`, then `hint("rms_norm", 2)`, then `solution("rms_norm")`. Or go on: after a blank, a
wrong answer or an error the cells below use the reference result, so the lesson runs to its end whatever you
have written. The checks work on every checkpoint (`LLAMA3_DIR`): the demo, SmolLM2-135M-Instruct, a model you
trained, or Meta's. The last cell, the scoreboard, prints every exercise's line and whether the prediction is
your own code's.

The exercises, by the name that `check`, `hint`, `solution` and `report` take, with a time budget and a
difficulty from 1 to 3:

{listing}

This notebook is written by `python tests/make_exercises.py` from the walkthrough: edit the walkthrough, not this
copy. The first cell checks this machine and the checkpoint; fix every FAIL line before you start."""

PREFLIGHT = f"""{IGNORE_MARKER}
import os

from llama3_support.preflight import preflight

requirements_met = preflight(os.environ.get("LLAMA3_DIR"))  # one OK or FAIL line each: fix every FAIL first"""

# the copy's own text in the cell that says what is stored: the walkthrough's outputs, and the reports' lines
STORED_OUTPUTS_NOTE = """This copy keeps the walkthrough's stored outputs, which Meta-Llama-3-8B prints too (shapes, the
configuration), except in the cells with a blank, which store nothing, so that no output gives an answer away; each
report cell stores the line a blank gives, `not attempted yet`. Cells whose output depends on the weights' values
are stored empty (they carry `# NBVAL_IGNORE_OUTPUT`): run them to see your checkpoint's numbers, and your checks'
verdicts."""

IMPORTS = ("from llama3_support.exercises import (check, exercise, hint, report, sample_once, scoreboard, solution,\n"
           "                                      withheld)")

SCOREBOARD = f"""{IGNORE_MARKER}
scoreboard(prediction=tokenizer.decode([next_token]))  # every exercise's line, and whose code made the prediction"""


@dataclass
class Lesson:
    """One lesson notebook with exercises, and everything of its copy that is its own."""
    notebook: Path          # the lesson, with the marks in its cells' metadata
    copy: Path              # the exercise copy written from it
    solution_name: str      # the copy with every blank filled in (--solutions DIR)
    exercise_set: object    # its ExerciseSet in llama3_support/exercises.py
    intro: str              # the first cell, {count} and {listing} filled in
    cells: tuple            # (id, source) of the code cells after the intro: pre-flight, imports
    last_cells: tuple       # (id, source) of the code cells at the end: the scoreboard
    stored_outputs_note: str = None  # the copy's text for the lesson's cell about its stored outputs (NOTE_KEY)
    closing: str = None     # a last markdown cell, after last_cells


WALKTHROUGH_LESSON = Lesson(
    notebook=REPO / "llama3_from_scratch.ipynb", copy=REPO / "llama3_from_scratch.exercises.ipynb",
    solution_name="llama3_from_scratch.solutions.ipynb", exercise_set=checks.WALKTHROUGH, intro=INTRO,
    cells=(("exercises-preflight", PREFLIGHT), ("exercises-imports", IMPORTS)),
    last_cells=(("exercises-scoreboard", SCOREBOARD),), stored_outputs_note=STORED_OUTPUTS_NOTE)

TRAINING_INTRO = """# Write and train your own Llama 3: exercises

The training notebook, `train_llama3_from_scratch.ipynb`, with {count} of its steps left for you to write: the
byte-pair encoding, Llama 3's modules, the loss, the optimizer, the schedule, the training step and the sampler.
Where a line reads `name = ...  # exercise N (name): your code` (or just `...  # exercise N`), replace the `...`
with your code and run the cell. The block around your code (`with exercise(...)`) takes the step's inputs before
your code runs and catches an error it raises; the cell after the exercise prints one line:

- `not attempted yet`: the blank is still there;
- `correct`: your result equals the float64 truth within rounding; for a module, its gradients too, with respect
  to its input and every weight, on a configuration of the check's own (4 query heads over 2 key/value heads, say);
- `wrong`, with what is wrong: a shape, a missing piece, a typical mistake recognised, or the error your code
  raised. It never shows the answer.

A correct module is used as it is: the model that trains is made of your classes, running your code, and its
weights are the ones the optimizer updates. A blank or a wrong one falls back to the reference arithmetic, on your
module's own weights, and its line says so, so the notebook always runs to its end. Stuck?
`hint("rmsnorm_module")`, then `hint("rmsnorm_module", 2)`, then `solution("rmsnorm_module")`.

The exercises, by the name that `check`, `hint`, `solution` and `report` take, with a time budget and a
difficulty from 1 to 3:

{listing}

For the room: `LLAMA3_TRAIN_MINUTES=3` trains for three minutes (docs/workshop.md, part 2). This notebook is
written by `python tests/make_exercises.py` from the training notebook: edit that, not this copy."""

TRAINING_IMPORTS = """from llama3_support import training_exercises
from llama3_support.training_exercises import check, exercise, hint, report, scoreboard, solution, withheld"""

TRAINING_SCOREBOARD = f"""{IGNORE_MARKER}
scoreboard(training_exercises.TRAINING_SET)  # every exercise's line"""

TRAINING_CLOSING = """## Your model in the walkthrough

Your checkpoint, trained by your own code, is in the folder the settings named (`LLAMA3_TRAIN_OUT`, by default
`checkpoints/tiny-shakespeare`). Open the walkthrough, or its exercise copy, on it, with these two settings (in
PowerShell `$env:LLAMA3_DIR = "checkpoints/tiny-shakespeare"`, in cmd `set LLAMA3_DIR=checkpoints/tiny-shakespeare`,
in bash or zsh `export LLAMA3_DIR=checkpoints/tiny-shakespeare`; the same for `LLAMA3_PROMPT="ROMEO:"`), then
`jupyter lab llama3_from_scratch.exercises.ipynb`. Its attention maps, logit lens and generated text are then your
model's."""

TRAINING_LESSON = Lesson(
    notebook=REPO / "train_llama3_from_scratch.ipynb", copy=REPO / "train_llama3_from_scratch.exercises.ipynb",
    solution_name="train_llama3_from_scratch.solutions.ipynb", exercise_set=TRAINING_SET, intro=TRAINING_INTRO,
    cells=(("exercises-imports", TRAINING_IMPORTS),), last_cells=(("exercises-scoreboard", TRAINING_SCOREBOARD),),
    closing=TRAINING_CLOSING)

LESSONS = {"walkthrough": WALKTHROUGH_LESSON, "training": TRAINING_LESSON}

# the walkthrough's, under the names the tests use
WALKTHROUGH, EXERCISE_COPY, SOLUTION_NAME = WALKTHROUGH_LESSON.notebook, WALKTHROUGH_LESSON.copy, WALKTHROUGH_LESSON.solution_name
EXERCISES = checks.WALKTHROUGH.exercises


class ExerciseMarkError(ValueError):
    """The walkthrough's exercise metadata does not fit its cells."""


def blank_line(line: str, answer: str = None) -> tuple:
    """(the exercise's line, the solution's line, the name the check assigns) for one blank line."""
    indent = line[:len(line) - len(line.lstrip())]
    statement = ast.parse(line.strip()).body[0]
    if isinstance(statement, ast.Return):
        if not answer:
            raise ExerciseMarkError(f"a blank `return` line needs an 'answer' name: {line.strip()!r}")
        return f"{indent}{answer} = ...", f"{indent}{answer} = {ast.get_source_segment(line.strip(), statement.value)}", answer
    if isinstance(statement, ast.Assign) and all(isinstance(target, ast.Name) for target in statement.targets):
        target = statement.targets[0].id
        return f"{indent}{target} = ...", line, target
    return f"{indent}...", line, None


def opens_a_block(blank: list) -> bool:
    """Whether the blank is one loop (or other block) with its body: the copy gives it one `...` line."""
    try:
        ast.parse(blank[0].strip())
        return False
    except SyntaxError:
        body = ast.parse(textwrap.dedent("\n".join(blank))).body
        return len(body) == 1 and isinstance(body[0], (ast.For, ast.While, ast.If, ast.With))


def split_check(exercise: dict) -> tuple:
    """The check line of a mark as (its assignment's target, the answer, the inputs' keywords), all source text."""
    text = exercise["check"]
    statement = ast.parse(text).body[0]
    call = statement.value if isinstance(statement, ast.Assign) else None
    if call is None or not isinstance(call, ast.Call) or len(call.args) != 2:
        raise ExerciseMarkError(f"exercise {exercise['name']!r}: the check line should read "
                                f"`name = check(\"{exercise['name']}\", answer, input=value, ...)`: {text!r}")
    target = ast.get_source_segment(text, statement.targets[0])
    answer = ast.get_source_segment(text, call.args[1])
    keywords = ", ".join(f"{keyword.arg}={ast.get_source_segment(text, keyword.value)}" for keyword in call.keywords)
    return target, answer, keywords


def exercise_lines(cell, exercise: dict, lines: list, solutions: bool, exercise_set) -> list:
    """The cell's lines with this exercise's blank lines in a `with exercise(...)` block, and its check after them."""
    name, blank = exercise["name"], exercise["blank"]
    if name not in exercise_set.exercises:
        raise ExerciseMarkError(f"cell {cell.id} marks an exercise {name!r} that llama3_support/exercises.py lacks")
    starts = [i for i in range(len(lines) - len(blank) + 1) if lines[i:i + len(blank)] == blank]
    if len(starts) != 1:
        raise ExerciseMarkError(
            f"cell {cell.id} of the walkthrough holds the lines that exercise {name!r} blanks {len(starts)} times, not "
            "once: the cell changed, so update its 'exercises' metadata to the lines as they read now")
    start, returned, targets = starts[0], None, []
    indent = blank[0][:len(blank[0]) - len(blank[0].lstrip())]
    body, number = [], exercise_set.exercises[name].number
    block = opens_a_block(blank)
    if block:  # a whole loop: one `...` line, the answer a name the cell bound before the block
        body = [f"    {line}" for line in blank] if solutions else [f"    {indent}...  # exercise {number} ({name}): your code"]
    for index, line in enumerate([] if block else blank):
        mine, solution, target = blank_line(line, exercise.get("answer"))
        if isinstance(ast.parse(line.strip()).body[0], ast.Return):
            returned = target
        if target:
            targets.append(target)
        if solutions:
            body.append(f"    {solution}")
        else:
            body.append(f"    {mine}  # exercise {number} ({name}): your code" if index == 0 else f"    {mine}")
    check_target, answer, keywords = split_check(exercise)
    answered = {node.id for node in ast.walk(ast.parse(answer)) if isinstance(node, ast.Name)}
    targets = [target for target in targets if target in answered]  # a step's own names stay in the block
    answer_is = exercise_set.exercises[name].answer_is
    if answer_is:  # the answer is an input written in place (the cache): the block takes it too
        keywords = f"{answer_is}={answer}" + (f", {keywords}" if keywords else "")
    if len(targets) != exercise_set.exercises[name].parts and targets:
        raise ExerciseMarkError(f"exercise {name!r} blanks {len(targets)} names; its check expects "
                                f"{exercise_set.exercises[name].parts}")
    bound = "" if not targets else f" as {targets[0]}" if len(targets) == 1 else f" as ({', '.join(targets)})"
    opening = f"{indent}with exercise({name!r}{', ' + keywords if keywords else ''}){bound}:".replace("'", '"')
    written = [opening] + body + [f"{indent}{check_target} = check(\"{name}\", {answer})"]
    if returned:
        written.append(f"{indent}return {returned}")
    return lines[:start] + written + lines[start + len(blank):]


DRAWING_NAMES = {"plt", "attention_heatmaps", "logit_lens_grid"}  # what draws a picture in the lessons' cells


def draws(statement: ast.stmt) -> bool:
    return any(isinstance(node, ast.Name) and node.id in DRAWING_NAMES for node in ast.walk(statement))


def withhold_printouts(lines: list, names: list) -> list:
    """The cell's top-level print() statements after its last top-level check, each run of them inside
    `with withheld(name):`, so that they show the step's result only once the learner's answer is right; where a
    picture is drawn after the check, every statement after it goes inside one such block."""
    source = "\n".join(lines)
    tree = ast.parse(source)
    checks_at_top = [statement for statement in tree.body if isinstance(statement, ast.Assign)
                     and isinstance(statement.value, ast.Call) and getattr(statement.value.func, "id", "") == "check"]
    if not checks_at_top:
        return lines
    last_check = checks_at_top[-1]
    name = ast.literal_eval(last_check.value.args[0])
    after_check = [statement for statement in tree.body if statement.lineno > last_check.lineno]
    if any(draws(statement) for statement in after_check):
        first, last = after_check[0].lineno - 1, after_check[-1].end_lineno
        return (lines[:first] + [f"with withheld(\"{name}\"):"]
                + [f"    {line}" if line.strip() else line for line in lines[first:last]] + lines[last:])
    runs, run = [], []
    for statement in tree.body:
        is_print = (statement.lineno > last_check.lineno and isinstance(statement, ast.Expr)
                    and isinstance(statement.value, ast.Call) and getattr(statement.value.func, "id", "") == "print")
        if is_print:
            run.append(statement)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    for run in reversed(runs):
        first, last = run[0].lineno - 1, run[-1].end_lineno
        lines = lines[:first] + [f"with withheld(\"{name}\"):"] + [f"    {line}" for line in lines[first:last]] + lines[last:]
    return lines


def report_cell(names_and_sources: list, cell_id: str, solutions: bool):
    cell = nbformat.v4.new_code_cell("\n".join(source for _, source in names_and_sources))
    cell.id = cell_id
    if not solutions:
        text = "".join(not_attempted_line(name) + "\n" for name, _ in names_and_sources)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    return cell


def listing_line(exercise) -> str:
    return (f"{exercise.number}. {exercise.title} (`{exercise.name}`): {exercise.minutes} min, difficulty "
            f"{exercise.difficulty}")


def exercise_notebook(walkthrough: nbformat.NotebookNode, solutions: bool = False,
                      lesson: Lesson = WALKTHROUGH_LESSON) -> nbformat.NotebookNode:
    """The exercise copy of the lesson (solutions=True: every blank filled in, outputs left out)."""
    registered = lesson.exercise_set.exercises
    notebook = copy.deepcopy(walkthrough)
    marked = [exercise["name"] for cell in notebook.cells for exercise in cell.metadata.get(METADATA_KEY, [])]
    if sorted(marked) != sorted(registered) or len(set(marked)) != len(marked):
        raise ExerciseMarkError(f"{lesson.notebook.name} marks {marked}; its ExerciseSet has {list(registered)}: "
                                "each exercise is marked once")
    if marked != sorted(marked, key=lambda name: registered[name].number):
        raise ExerciseMarkError(f"{lesson.notebook.name} marks the exercises in the order {marked}: number them so in "
                                "llama3_support/exercises.py")
    listing = "\n".join(listing_line(registered[name]) for name in marked)
    intro = nbformat.v4.new_markdown_cell(lesson.intro.format(count=len(marked), listing=listing))
    intro.id = "exercises-intro"
    cells, waiting = [intro], {}
    withheld_cells = {cell_id: exercise["name"] for cell in notebook.cells
                      for exercise in cell.metadata.get(METADATA_KEY, []) for cell_id in exercise.get("withhold", [])}
    unknown = set(withheld_cells) - {cell.id for cell in notebook.cells}
    if unknown:
        raise ExerciseMarkError(f"no cell of {lesson.notebook.name} has the id that withhold names: {sorted(unknown)}")
    for cell_id, source in lesson.cells:
        cells.append(nbformat.v4.new_code_cell(source))
        cells[-1].id = cell_id
    for cell in notebook.cells:
        exercises = cell.metadata.pop(METADATA_KEY, [])
        if cell.metadata.get(NOTE_KEY) and lesson.stored_outputs_note:
            cell.source = lesson.stored_outputs_note
        lines = cell.source.split("\n")
        for exercise in exercises:
            lines = exercise_lines(cell, exercise, lines, solutions, lesson.exercise_set)
            report = (exercise["name"], exercise.get("report", f"report({exercise['name']!r})"))
            waiting.setdefault(exercise.get("report_after", cell.id), []).append(report)
        if exercises:
            lines = withhold_printouts(lines, [exercise["name"] for exercise in exercises])
        if cell.id in withheld_cells:  # a later cell that shows the step's result: all of it inside withheld()
            body = lines[1:] if lines[0] == IGNORE_MARKER else lines
            lines = [f"with withheld(\"{withheld_cells[cell.id]}\"):"] + [f"    {line}" if line.strip() else line
                                                                          for line in body]
        if exercises or cell.id in withheld_cells:
            if lines[0] != IGNORE_MARKER:
                lines = [IGNORE_MARKER] + lines
            cell.outputs = []
        cell.source = "\n".join(lines)
        if solutions and cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
        reports = waiting.pop(cell.id, [])
        if reports:
            cells.append(report_cell(reports, f"check-{reports[0][0].replace('_', '-')}", solutions))
    if waiting:
        raise ExerciseMarkError(f"no cell of the walkthrough has the id that report_after names: {sorted(waiting)}")
    for cell_id, source in lesson.last_cells:
        cells.append(nbformat.v4.new_code_cell(source))
        cells[-1].id = cell_id
    if lesson.closing:
        cells.append(nbformat.v4.new_markdown_cell(lesson.closing))
        cells[-1].id = "exercises-closing"
    notebook.cells = cells
    if not solutions:
        number_executed_cells(notebook)
    return notebook


def number_executed_cells(notebook: nbformat.NotebookNode) -> None:
    """Execution counts 1, 2, ... for the cells whose outputs are stored, as one run in order gives them."""
    count = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        if IGNORE_MARKER in cell.source:
            cell.execution_count = None
            continue
        count += 1
        cell.execution_count = count
        for output in cell.outputs:
            if output.output_type == "execute_result":
                output.execution_count = count


def written(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lesson", choices=sorted(LESSONS), action="append",
                        help="which lesson's exercise copy to write (default: every lesson's); may be repeated")
    parser.add_argument("--check", action="store_true", help="write nothing: exit 1 if the committed copy differs")
    parser.add_argument("--solutions", type=Path, metavar="DIR",
                        help="also write each copy with every blank filled in (" + ", ".join(
                            lesson.solution_name for lesson in LESSONS.values()) + ") into DIR (a folder that exists)")
    args = parser.parse_args(argv)
    if args.solutions is not None and not args.solutions.is_dir():
        parser.error(f"--solutions {args.solutions}: no such folder. Create it first, or name a temporary one.")
    status = 0
    for key in args.lesson or LESSONS:
        status = max(status, write_copy(key, LESSONS[key], args.check, args.solutions))
    return status


def write_copy(key: str, lesson: Lesson, check_only: bool, solutions_dir: Path = None) -> int:
    """Write (or with check_only compare) one lesson's exercise copy, and its solutions copy into solutions_dir."""
    source = nbformat.read(lesson.notebook, as_version=4)
    try:
        text = written(exercise_notebook(source, lesson=lesson))
    except ExerciseMarkError as error:
        print(f"{lesson.notebook.name}: {error}", file=sys.stderr)
        return 1
    if check_only:
        if not lesson.copy.is_file() or lesson.copy.read_text() != text:
            print(f"{lesson.copy.name} is not what {lesson.notebook.name} gives now: run python tests/make_exercises.py"
                  f" --lesson {key}", file=sys.stderr)
            return 1
        print(f"{lesson.copy.name} is up to date")
    else:
        lesson.copy.write_text(text)
        print(f"wrote {lesson.copy.name}: {len(lesson.exercise_set.exercises)} exercises")
    if solutions_dir is not None:
        path = solutions_dir / lesson.solution_name
        path.write_text(written(exercise_notebook(source, solutions=True, lesson=lesson)))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
