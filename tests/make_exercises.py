"""Write the exercise copies, each notebook with blanks for the learner, from the notebook (NOTEBOOKS below):
llama3_from_scratch.exercises.ipynb from the walkthrough, train_llama3_from_scratch.exercises.ipynb from the
training notebook.

    python tests/make_exercises.py                  # write both copies
    python tests/make_exercises.py --check          # exit 1 if a committed copy is not what this writes
    python tests/make_exercises.py --solutions DIR  # also write each copy with every blank filled in, into DIR

The exercise copy is never edited by hand. A walkthrough cell holds its exercises in its metadata, so that its
visible source stays as it is:

    "exercises": [{"name": "rms_norm",                        # a name in llama3_support/exercises.py
                   "blank": ["    x_normed = x_float * ..."],  # consecutive lines of the cell, exactly
                   "check": "x_normed = check(\"rms_norm\", x_normed, x_float=x_float, norm_eps=norm_eps)",
                   "answer": "position_logits",                # for a blank `return ...`: the name it gets
                   "report_after": "61137d0f",                 # the report after that cell, not this one
                   "report": "report(\"top_p\", probe=...)"}]  # a report of its own

In the copy each blank line becomes `name = ...` (`...` for a line that assigns into a tensor); a blank whose
first line opens a block (a `for` or `while` loop and its body) becomes one `...` line. The check line
follows at the indentation of the blank's first line, and a code cell after the cell (or after report_after) reports one line per
exercise. The lesson's stored outputs are the walkthrough's (true for Meta-Llama-3-8B, stored on the demo); a
report cell stores the line a blank gives, "not attempted yet". The copy opens with the workshop's pre-flight
check (stored empty) and the import of check, hint and report.
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

from llama3_support.exercises import EXERCISES, not_attempted_line  # noqa: E402
from llama3_support.training_exercises import TRAINING_EXERCISES  # noqa: E402
from refresh_stored_outputs import NOTE_KEY  # noqa: E402  (the walkthrough's cell about its stored outputs)

WALKTHROUGH = REPO / "llama3_from_scratch.ipynb"
EXERCISE_COPY = REPO / "llama3_from_scratch.exercises.ipynb"
SOLUTION_NAME = "llama3_from_scratch.solutions.ipynb"
METADATA_KEY = "exercises"
IGNORE_MARKER = "# NBVAL_IGNORE_OUTPUT"

INTRO = """# Llama 3 from scratch: exercises

The walkthrough, `llama3_from_scratch.ipynb`, with {count} of its steps left for you to write. Where a line reads
`name = ...  # exercise N (name): ...`, replace the `...` with your code and run the cell. The line after it hands
your answer to `check`, and the cell after the exercise prints one line:

- `not attempted yet`: the blank is still there;
- `correct`, with what the number means: how close your result is to the truth computed in float64 from the same
  inputs, in units in the last place;
- `wrong`, with what is wrong: the shape (which axis), the dtype, the positions or heads that are off, or a typical
  mistake recognised. It never shows the expected values.

Stuck? `hint("rms_norm")`, then `hint("rms_norm", 2)`. Or go on: after a blank or a wrong answer the cells below use
the reference result, so the lesson runs to its end whatever you have written. The checks work on every checkpoint
(`LLAMA3_DIR`): the demo, SmolLM2-135M-Instruct, a model you trained, or Meta's.

The exercises, by the name that `check`, `hint` and `report` take:

{listing}

This notebook is written by `python tests/make_exercises.py` from the walkthrough: edit the walkthrough, not this
copy. The first cell checks this machine and the checkpoint; fix every FAIL line before you start."""

PREFLIGHT = f"""{IGNORE_MARKER}
import os

from llama3_support.preflight import preflight

requirements_met = preflight(os.environ.get("LLAMA3_DIR"))  # one OK or FAIL line each: fix every FAIL first"""

# the copy's own text in the cell that says what is stored: the walkthrough's outputs, and the reports' lines
STORED_OUTPUTS_NOTE = """This copy keeps the walkthrough's stored outputs, which Meta-Llama-3-8B prints too: shapes, token ids, the
configuration, rotary frequencies, masks; each report cell stores the line a blank gives, `not attempted yet`.
Cells whose output depends on the weights' values are stored empty (they carry `# NBVAL_IGNORE_OUTPUT`): run
them to see your checkpoint's numbers, and your checks' verdicts."""

IMPORTS = "from llama3_support.exercises import check, hint, report, sample_once"

TRAINING_NOTEBOOK = REPO / "train_llama3_from_scratch.ipynb"
TRAINING_COPY = REPO / "train_llama3_from_scratch.exercises.ipynb"
TRAINING_SOLUTION_NAME = "train_llama3_from_scratch.solutions.ipynb"

TRAINING_INTRO = """# Write and train your own Llama 3: exercises

The training notebook, `train_llama3_from_scratch.ipynb`, with {count} of its steps left for you to write: the
byte-pair encoding, Llama 3's modules, the loss, the optimizer, the schedule, the training step and the sampler.
Where a line reads `name = ...  # exercise N (name): ...` (or just `...  # exercise N`), replace the `...` with
your code and run the cell. The cell after it prints one line per exercise:

- `not attempted yet`: the blank is still there;
- `correct`: your result equals the float64 truth within rounding; for a module, its gradients too, with respect
  to its input and every weight, on a configuration of the check's own (4 query heads over 2 key/value heads, say);
- `wrong`, with what is wrong: a shape, a missing piece, a typical mistake recognised. It never shows the answer.

A correct module is used as it is: the model that trains is made of your classes, running your code, and its
weights are the ones the optimizer updates. A blank or a wrong one falls back to the reference arithmetic, on your
module's own weights, and its line says so, so the notebook always runs to its end. Stuck? `hint("rmsnorm_module")`,
then `hint("rmsnorm_module", 2)`.

The exercises, by the name that `check`, `hint` and `report` take:

{listing}

For the room: `LLAMA3_TRAIN_MINUTES=3` trains for three minutes (docs/workshop.md, part 2). This notebook is
written by `python tests/make_exercises.py` from the training notebook: edit that, not this copy."""

TRAINING_IMPORTS = """from llama3_support import training_exercises
from llama3_support.training_exercises import check, hint, report"""

TRAINING_CLOSING = """## Your model in the walkthrough

Your checkpoint, trained by your own code, is in the folder the settings named (`LLAMA3_TRAIN_OUT`, by default
`checkpoints/tiny-shakespeare`). Open the walkthrough, or its exercise copy, on it, with these two settings (in
PowerShell `$env:LLAMA3_DIR = "checkpoints/tiny-shakespeare"`, in cmd `set LLAMA3_DIR=checkpoints/tiny-shakespeare`,
in bash or zsh `export LLAMA3_DIR=checkpoints/tiny-shakespeare`; the same for `LLAMA3_PROMPT="ROMEO:"`), then
`jupyter lab llama3_from_scratch.exercises.ipynb`. Its attention maps, logit lens and generated text are then your
model's."""


@dataclass(frozen=True)
class ExerciseSet:
    """One notebook and its exercise copy: where the marks are read, where the copy goes, and its own cells."""
    source: Path
    copy: Path
    solution_name: str
    exercises: dict
    intro: str
    imports: str
    preflight: str = None        # a first code cell that checks the machine (the walkthrough's, for its checkpoint)
    stored_note: str = None      # the copy's text of the cell marked NOTE_KEY
    closing: str = None          # a last markdown cell


NOTEBOOKS = {
    "walkthrough": ExerciseSet(WALKTHROUGH, EXERCISE_COPY, SOLUTION_NAME, EXERCISES, INTRO, IMPORTS, PREFLIGHT,
                               STORED_OUTPUTS_NOTE),
    "training": ExerciseSet(TRAINING_NOTEBOOK, TRAINING_COPY, TRAINING_SOLUTION_NAME, TRAINING_EXERCISES,
                            TRAINING_INTRO, TRAINING_IMPORTS, closing=TRAINING_CLOSING),
}


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
    """Whether the blank is one loop (or other block) with its body: it becomes a single `...` line."""
    try:
        ast.parse(blank[0].strip())
        return False
    except SyntaxError:
        body = ast.parse(textwrap.dedent("\n".join(blank))).body
        return len(body) == 1 and isinstance(body[0], (ast.For, ast.While, ast.If, ast.With))


def exercise_lines(cell, exercise: dict, lines: list, solutions: bool, exercises: dict = EXERCISES) -> list:
    """The cell's lines with this exercise's blank lines replaced, and its check line after them."""
    name, blank = exercise["name"], exercise["blank"]
    if name not in exercises:
        raise ExerciseMarkError(f"cell {cell.id} marks an exercise {name!r} that its set of exercises lacks")
    starts = [i for i in range(len(lines) - len(blank) + 1) if lines[i:i + len(blank)] == blank]
    if len(starts) != 1:
        raise ExerciseMarkError(
            f"cell {cell.id} of the walkthrough holds the lines that exercise {name!r} blanks {len(starts)} times, not "
            "once: the cell changed, so update its 'exercises' metadata to the lines as they read now")
    start, returned = starts[0], None
    written = []
    first_indent = blank[0][:len(blank[0]) - len(blank[0].lstrip())]
    if opens_a_block(blank):
        number = exercises[name].number
        written = blank[:] if solutions else [f"{first_indent}...  # exercise {number} ({name}): your code"]
        written.append(f"{first_indent}{exercise['check']}")
        return lines[:start] + written + lines[start + len(blank):]
    for index, line in enumerate(blank):
        mine, solution, target = blank_line(line, exercise.get("answer"))
        if isinstance(ast.parse(line.strip()).body[0], ast.Return):
            returned = target
        if solutions:
            written.append(solution)
        else:
            number = exercises[name].number
            written.append(f"{mine}  # exercise {number} ({name}): your code" if index == 0 else mine)
    indent = blank[-1][:len(blank[-1]) - len(blank[-1].lstrip())]
    written.append(f"{indent}{exercise['check']}")
    if returned:
        written.append(f"{indent}return {returned}")
    return lines[:start] + written + lines[start + len(blank):]


def report_cell(names_and_sources: list, cell_id: str, solutions: bool):
    cell = nbformat.v4.new_code_cell("\n".join(source for _, source in names_and_sources))
    cell.id = cell_id
    if not solutions:
        text = "".join(not_attempted_line(name) + "\n" for name, _ in names_and_sources)
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    return cell


def exercise_notebook(walkthrough: nbformat.NotebookNode, solutions: bool = False,
                      exercise_set: ExerciseSet = NOTEBOOKS["walkthrough"]) -> nbformat.NotebookNode:
    """The exercise copy of a notebook (solutions=True: every blank filled in, outputs left out)."""
    notebook, registry = copy.deepcopy(walkthrough), exercise_set.exercises
    marked = [exercise["name"] for cell in notebook.cells for exercise in cell.metadata.get(METADATA_KEY, [])]
    if sorted(marked) != sorted(registry) or len(set(marked)) != len(marked):
        raise ExerciseMarkError(f"the notebook marks {marked}; its set of exercises has {list(registry)}: "
                                "each exercise is marked once")
    if marked != sorted(marked, key=lambda name: registry[name].number):
        raise ExerciseMarkError(f"the notebook marks the exercises in the order {marked}: number them so where "
                                "they are registered")
    listing = "\n".join(f"{registry[name].number}. {registry[name].title} (`{name}`)" for name in marked)
    intro = nbformat.v4.new_markdown_cell(exercise_set.intro.format(count=len(marked), listing=listing))
    intro.id = "exercises-intro"
    cells, waiting = [intro], {}
    if exercise_set.preflight:
        preflight = nbformat.v4.new_code_cell(exercise_set.preflight)
        preflight.id = "exercises-preflight"
        cells.append(preflight)
    imports = nbformat.v4.new_code_cell(exercise_set.imports)
    imports.id = "exercises-imports"
    cells.append(imports)
    for cell in notebook.cells:
        exercises = cell.metadata.pop(METADATA_KEY, [])
        if cell.metadata.get(NOTE_KEY) and exercise_set.stored_note:
            cell.source = exercise_set.stored_note
        lines = cell.source.split("\n")
        for exercise in exercises:
            lines = exercise_lines(cell, exercise, lines, solutions, registry)
            report = (exercise["name"], exercise.get("report", f"report({exercise['name']!r})"))
            waiting.setdefault(exercise.get("report_after", cell.id), []).append(report)
        cell.source = "\n".join(lines)
        if solutions and cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
        reports = waiting.pop(cell.id, [])
        if reports:
            cells.append(report_cell(reports, f"check-{reports[0][0].replace('_', '-')}", solutions))
    if waiting:
        raise ExerciseMarkError(f"no cell of the notebook has the id that report_after names: {sorted(waiting)}")
    if exercise_set.closing:
        closing = nbformat.v4.new_markdown_cell(exercise_set.closing)
        closing.id = "exercises-closing"
        cells.append(closing)
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
    parser.add_argument("--check", action="store_true", help="write nothing: exit 1 if the committed copy differs")
    parser.add_argument("--solutions", type=Path, metavar="DIR",
                        help="also write each copy with every blank filled in (" + ", ".join(
                            exercise_set.solution_name for exercise_set in NOTEBOOKS.values()) +
                        ") into DIR (a folder that exists)")
    args = parser.parse_args(argv)
    if args.solutions is not None and not args.solutions.is_dir():
        parser.error(f"--solutions {args.solutions}: no such folder. Create it first, or name a temporary one.")
    status = 0
    for exercise_set in NOTEBOOKS.values():
        status = max(status, write_copy(exercise_set, args.check, args.solutions))
    return status


def write_copy(exercise_set: ExerciseSet, check_only: bool, solutions_dir: Path = None) -> int:
    """Write (or with check_only compare) one exercise copy, and its solutions copy into solutions_dir."""
    source = nbformat.read(exercise_set.source, as_version=4)
    try:
        text = written(exercise_notebook(source, exercise_set=exercise_set))
    except ExerciseMarkError as error:
        print(f"{exercise_set.source.name}: {error}", file=sys.stderr)
        return 1
    if check_only:
        if not exercise_set.copy.is_file() or exercise_set.copy.read_text() != text:
            print(f"{exercise_set.copy.name} is not what {exercise_set.source.name} gives now: run "
                  "python tests/make_exercises.py", file=sys.stderr)
            return 1
        print(f"{exercise_set.copy.name} is up to date")
    else:
        exercise_set.copy.write_text(text)
        print(f"wrote {exercise_set.copy.name}: {len(exercise_set.exercises)} exercises")
    if solutions_dir is not None:
        path = solutions_dir / exercise_set.solution_name
        path.write_text(written(exercise_notebook(source, solutions=True, exercise_set=exercise_set)))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
