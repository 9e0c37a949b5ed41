"""Import cost of chanx over its runtime dependencies, in one fresh interpreter.

    python importcost.py                     # one JSON line: baseline_ms, chanx_ms
    python -X importtime importcost.py       # also: the import tree on stderr
    python importcost.py --profile 30        # cProfile of `import chanx`, top 30
    python importcost.py --with-model        # baseline also builds one pydantic model
    python importcost.py --statements 25     # chanx.py's top-level statements, slowest 25

run.py's ``import`` job calls it in a fresh process per measurement with the
chanx peer's venv and PYTHONPATH (the chanx.py snapshot, byte-compiled first,
as an installed module would be). Definition (bench/README.md):

- baseline: from the first line below until the dependencies are imported:
  ``settings.configure()`` of a minimal project (auth, contenttypes,
  rest_framework, channels; SQLite in memory; in-memory channel layer),
  ``django.setup()``, ``import channels, channels.layers, rest_framework``,
  ``from pydantic import BaseModel, TypeAdapter``;
- chanx: the time of ``import chanx`` right after, in the same process.

``--with-model``: the baseline also defines one ``BaseModel`` subclass with a
``Field`` and builds one ``TypeAdapter``, the first-use cost (``pydantic.fields``,
``annotated_types``, the plugin loader) that any project with one pydantic
model pays; what remains on top is chanx's own.

Only ``sys`` and ``time`` (both built in) are imported before the baseline
starts. A line ``--- import chanx ---`` is written to stderr just before
``import chanx``, so ``-X importtime`` lines after it belong to chanx.
"""

import sys
import time

t0 = time.perf_counter()
from django.conf import settings  # noqa: E402

settings.configure(
    SECRET_KEY="importcost",
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "rest_framework",
        "channels",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    USE_TZ=True,
)
import django  # noqa: E402

django.setup()
import channels  # noqa: E402
import channels.layers  # noqa: E402, F401
import rest_framework  # noqa: E402, F401
from pydantic import BaseModel, TypeAdapter  # noqa: E402

if "--with-model" in sys.argv:
    from pydantic import Field

    class _First(BaseModel):
        name: str = Field(default="", max_length=10)

    TypeAdapter(int)
t1 = time.perf_counter()
modules_before = len(sys.modules)
if "--statements" in sys.argv:
    # chanx.py's module body one top-level statement at a time, each timed: what
    # `import chanx` spends on which class, model, adapter or import.
    import __future__

    import ast
    import importlib.util
    import types

    spec = importlib.util.find_spec("chanx")
    source = open(spec.origin, encoding="utf-8").read()  # noqa: SIM115
    tree = ast.parse(source, spec.origin)
    module = types.ModuleType("chanx")
    module.__file__ = spec.origin
    sys.modules["chanx"] = module
    flags = 0
    timings = []
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            for alias in stmt.names:
                flags |= getattr(__future__, alias.name).compiler_flag
        code = compile(ast.Module([stmt], []), spec.origin, "exec", flags=flags, dont_inherit=True)
        t = time.perf_counter()
        exec(code, module.__dict__)
        timings.append((time.perf_counter() - t, stmt.lineno, source.splitlines()[stmt.lineno - 1]))
    total = sum(t for t, _, _ in timings)
    n = int(sys.argv[sys.argv.index("--statements") + 1])
    print(f"{len(timings)} top-level statements, {total * 1e3:.1f} ms in all; slowest {n}:")
    for t, line, text in sorted(timings, reverse=True)[:n]:
        print(f"{t * 1e3:7.2f} ms  chanx.py:{line:<5} {text.strip()[:90]}")
elif "--profile" in sys.argv:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    import chanx

    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
    stats.print_stats(int(sys.argv[sys.argv.index("--profile") + 1]))
    print(out.getvalue())
else:
    sys.stderr.write("--- import chanx ---\n")
    sys.stderr.flush()
    import chanx

    t2 = time.perf_counter()
    import json

    print(
        json.dumps(
            {
                "baseline_ms": (t1 - t0) * 1e3,
                "chanx_ms": (t2 - t1) * 1e3,
                "chanx_file": chanx.__file__,
                "modules_before": modules_before,
                "modules_added": len(sys.modules) - modules_before,
            }
        )
    )
