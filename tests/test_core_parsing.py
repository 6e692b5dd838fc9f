"""Unit tests of the pure parsing parts of the core.

Job descriptions (`parse_job`), variables, wall time, node specifications
(`--nodes`, Slurm hostlists and per-node counts, CPU lists) and the iteration
resource schedulers (`maximum-iters`, `split-into`).
"""
import copy
import random

import pytest

from qcg_hier.core.errors import JobDescriptionError, ResourceSpecError
from qcg_hier.core.iterschedulers import MaximumIters, SplitInto, make_sizer
from qcg_hier.core.jobdesc import UNLIMITED, IterationSpec, Range, check_job_name, parse_job
from qcg_hier.core.nodespec import (NodeSpec, compress_counts, expand_counts, expand_hostlist,
                                    parse_nodes_option, slurm_nodes)
from qcg_hier.core.variables import (LAUNCH_VARIABLES, SUBMIT_VARIABLES, substitute, substitute_tree,
                                     uses_launch_variables)
from qcg_hier.core.walltime import parse_walltime


def job(**over):
    """A minimal valid description named 'j', with top-level keys replaced (None: removed)."""
    desc = {"name": "j", "execution": {"exec": "/bin/true"}}
    for key, value in over.items():
        if value is None:
            desc.pop(key, None)
        else:
            desc[key] = value
    return desc


def bad(desc, field, job_name="j"):
    """parse_job must fail with a JobDescriptionError naming the job and the field."""
    with pytest.raises(JobDescriptionError) as info:
        parse_job(desc)
    err = info.value
    msg = str(err)
    if job_name is not None:
        assert err.job == job_name
        assert f"job '{job_name}'" in msg
    assert err.field == field, (err.field, msg)
    assert f"field '{field}'" in msg
    return err


# ====================================================================== parse_job: invalid
class TestParseJobErrors:
    def test_not_a_dict(self):
        with pytest.raises(JobDescriptionError):
            parse_job(["name", "j"])

    def test_missing_name(self):
        desc = job(name=None)
        bad(desc, "name", job_name=None)

    @pytest.mark.parametrize("name", ["", 5, None])
    def test_empty_or_wrong_type_name(self, name):
        desc = job()
        desc["name"] = name
        bad(desc, "name", job_name=None)

    def test_missing_execution(self):
        bad(job(execution=None), "execution")

    def test_execution_null(self):
        desc = job()
        desc["execution"] = None
        bad(desc, "execution")

    def test_execution_not_object(self):
        bad(job(execution="/bin/true"), "execution")

    def test_execution_without_exec_or_script(self):
        bad(job(execution={"args": ["a"]}), "execution")

    def test_exec_and_script_together(self):
        err = bad(job(execution={"exec": "/bin/date", "script": "date"}), "execution")
        assert "exclusive" in err.problem

    def test_args_with_script(self):
        bad(job(execution={"script": "date", "args": ["-u"]}), "execution.args")

    def test_unknown_key_top_level(self):
        bad(job(resource={"numCores": 1}), "resource")

    def test_unknown_key_in_execution(self):
        bad(job(execution={"exec": "x", "argz": []}), "execution.argz")

    def test_unknown_key_in_resources(self):
        bad(job(resources={"numCore": 2}), "resources.numCore")

    def test_unknown_key_in_numcores(self):
        bad(job(resources={"numCores": {"min": 1, "maxi": 3}}), "resources.numCores.maxi")

    def test_unknown_key_in_numnodes(self):
        bad(job(resources={"numNodes": {"exactly": 1}}), "resources.numNodes.exactly")

    def test_unknown_key_in_nodecrs(self):
        bad(job(resources={"numNodes": 1, "nodeCrs": {"gpus": 1}}), "resources.nodeCrs.gpus")

    def test_unknown_key_in_iteration(self):
        bad(job(iteration={"stop": 3, "step": 1}), "iteration.step")

    def test_unknown_key_in_dependencies(self):
        bad(job(dependencies={"before": ["a"]}), "dependencies.before")

    def test_unknown_key_in_model_opts(self):
        bad(job(execution={"exec": "x", "model": "openmpi", "model_opts": {"mpiexec": "m"}}),
            "execution.model_opts.mpiexec")

    def test_unknown_key_in_scheduler(self):
        bad(job(iteration={"stop": 2},
                resources={"numCores": {"min": 1, "scheduler": {"name": "split-into", "opts": {}}}}),
            "resources.numCores.scheduler.opts")

    def test_unknown_scheduler_param(self):
        bad(job(iteration={"stop": 2},
                resources={"numCores": {"min": 1, "scheduler": {"name": "split-into", "params": {"pieces": 2}}}}),
            "resources.numCores.scheduler.params.pieces")

    @pytest.mark.parametrize("value", [0, -1, -8])
    def test_numcores_not_positive(self, value):
        bad(job(resources={"numCores": value}), "resources.numCores")

    @pytest.mark.parametrize("value", [0, -2])
    def test_numcores_exact_not_positive(self, value):
        bad(job(resources={"numCores": {"exact": value}}), "resources.numCores.exact")

    @pytest.mark.parametrize("value", ["4", 2.5, [4]])
    def test_numcores_not_int(self, value):
        bad(job(resources={"numCores": value}), "resources.numCores")

    @pytest.mark.parametrize("value", [True, False])
    def test_numcores_bool(self, value):
        bad(job(resources={"numCores": value}), "resources.numCores")

    def test_numcores_exact_bool(self):
        bad(job(resources={"numCores": {"exact": True}}), "resources.numCores.exact")

    def test_numcores_min_float(self):
        bad(job(resources={"numCores": {"min": 1.0}}), "resources.numCores.min")

    def test_numcores_min_zero(self):
        bad(job(resources={"numCores": {"min": 0, "max": 2}}), "resources.numCores.min")

    def test_numcores_empty_dict(self):
        bad(job(resources={"numCores": {}}), "resources.numCores")

    def test_exact_with_min(self):
        bad(job(resources={"numCores": {"exact": 2, "min": 1}}), "resources.numCores")

    def test_numnodes_zero(self):
        bad(job(resources={"numNodes": 0}), "resources.numNodes")

    def test_max_smaller_than_min(self):
        err = bad(job(resources={"numCores": {"min": 4, "max": 2}}), "resources.numCores.max")
        assert "smaller than min" in err.problem

    def test_max_smaller_than_min_nodes(self):
        bad(job(resources={"numNodes": {"min": 3, "max": 1}}), "resources.numNodes.max")

    def test_iteration_stop_before_start(self):
        bad(job(iteration={"start": 5, "stop": 3}), "iteration.stop")

    def test_iteration_stop_equals_start(self):
        bad(job(iteration={"start": 3, "stop": 3}), "iteration.stop")

    def test_iteration_stop_zero(self):
        bad(job(iteration={"stop": 0}), "iteration.stop")

    def test_iteration_missing_stop(self):
        bad(job(iteration={"start": 1}), "iteration.stop")

    @pytest.mark.parametrize("key,value", [("start", -1), ("stop", "3"), ("stop", True), ("start", 1.5)])
    def test_iteration_bad_bounds(self, key, value):
        it = {"start": 0, "stop": 4}
        it[key] = value
        bad(job(iteration=it), f"iteration.{key}")

    def test_iteration_values_empty(self):
        bad(job(iteration={"values": []}), "iteration.values")

    def test_iteration_values_not_list(self):
        bad(job(iteration={"values": "abc"}), "iteration.values")

    def test_iteration_values_with_stop(self):
        bad(job(iteration={"values": ["a"], "stop": 1}), "iteration")

    @pytest.mark.parametrize("wt", ["5x", "", "0s", 12, "1h30", "h", "1m1h", " ", "0h0m0s", "-5s", "1.5h"])
    def test_malformed_wt(self, wt):
        bad(job(resources={"wt": wt}), "resources.wt")

    def test_unknown_model(self):
        err = bad(job(execution={"exec": "x", "model": "mpich"}), "execution.model")
        assert "mpich" in err.problem

    def test_unknown_iteration_scheduler(self):
        err = bad(job(iteration={"stop": 4},
                      resources={"numCores": {"min": 1, "scheduler": {"name": "round-robin"}}}),
                  "resources.numCores.scheduler.name")
        assert "round-robin" in err.problem

    def test_unknown_iteration_scheduler_str(self):
        bad(job(iteration={"stop": 4}, resources={"numCores": {"min": 1, "scheduler": "fastest"}}),
            "resources.numCores.scheduler.name")

    def test_scheduler_with_max(self):
        bad(job(iteration={"stop": 4},
                resources={"numCores": {"min": 1, "max": 4, "scheduler": {"name": "maximum-iters"}}}),
            "resources.numCores.max")

    def test_scheduler_on_both(self):
        bad(job(iteration={"stop": 4},
                resources={"numCores": {"min": 1, "scheduler": "split-into"},
                           "numNodes": {"min": 1, "scheduler": "split-into"}}),
            "resources")

    def test_scheduler_parts_zero(self):
        bad(job(iteration={"stop": 4},
                resources={"numCores": {"min": 1, "scheduler": {"name": "split-into", "params": {"parts": 0}}}}),
            "resources.numCores.scheduler.params.parts")

    @pytest.mark.parametrize("name", ["my job", "a:b", "a$b", "${jname}", "a'b", 'a"b', "a{b", "a}b",
                                      "a(b)", "tab\there", "new\nline"])
    def test_bad_job_names(self, name):
        desc = job()
        desc["name"] = name
        err = bad(desc, "name", job_name=name)
        assert "invalid characters" in err.problem

    def test_check_job_name_accepts_plain(self):
        assert check_job_name("job-1_a.b") == "job-1_a.b"

    @pytest.mark.parametrize("dep", ["a:b", "a:1:2", "", "a:", "a:${it}x", "a:-1", ":3", "a:\u00b2", "a: 1"])
    def test_malformed_dependency(self, dep):
        bad(job(iteration={"stop": 2}, dependencies={"after": [dep]}), "dependencies.after[0]")

    def test_dependency_after_not_list(self):
        bad(job(dependencies={"after": {"a": 1}}), "dependencies.after")

    def test_it_dependency_without_iterations(self):
        bad(job(dependencies={"after": ["a:${it}"]}), "dependencies.after")

    def test_resources_not_object(self):
        bad(job(resources=[1]), "resources")

    def test_nodecrs_gpu_negative(self):
        bad(job(resources={"numNodes": 1, "nodeCrs": {"gpu": -1}}), "resources.nodeCrs.gpu")

    def test_nodecrs_mem_not_int(self):
        bad(job(resources={"numNodes": 1, "nodeCrs": {"mem": "1G"}}), "resources.nodeCrs.mem")

    def test_args_not_list(self):
        bad(job(execution={"exec": "x", "args": "-l"}), "execution.args")

    def test_args_item_not_scalar(self):
        bad(job(execution={"exec": "x", "args": ["ok", {"a": 1}]}), "execution.args[1]")

    def test_env_not_object(self):
        bad(job(execution={"exec": "x", "env": ["A=1"]}), "execution.env")

    def test_exec_empty(self):
        bad(job(execution={"exec": ""}), "execution.exec")

    def test_exec_not_string(self):
        bad(job(execution={"exec": ["/bin/true"]}), "execution.exec")

    def test_attributes_not_object(self):
        bad(job(attributes=[1]), "attributes")

    def test_model_opts_not_object(self):
        bad(job(execution={"exec": "x", "model_opts": ["a"]}), "execution.model_opts")


# ====================================================================== parse_job: valid
class TestParseJobValid:
    def test_minimal_defaults(self):
        spec = parse_job(job())
        assert spec.name == "j"
        assert spec.execution.exec == "/bin/true"
        assert spec.execution.script is None
        assert spec.execution.model == "default"
        assert spec.resources.cores == Range(1, 1)
        assert spec.resources.nodes is None
        assert spec.iteration is None
        assert spec.after == ()
        assert spec.attributes is None
        req = spec.resources.request()
        assert (req.cores_min, req.cores_max, req.nodes_min, req.nodes_max) == (1, 1, None, None)

    def test_script(self):
        spec = parse_job(job(execution={"script": "echo hi; date"}))
        assert spec.execution.script == "echo hi; date"
        assert spec.execution.exec is None

    def test_full_execution(self):
        spec = parse_job(job(execution={
            "exec": "app", "args": ["-n", 5, 1.5], "env": {"A": "1", "B": 2}, "wd": "w", "stdin": "in",
            "stdout": "out", "stderr": "err", "modules": ["m1", "m2"], "venv": "/v", "model": "OpenMPI",
            "model_opts": {"mpirun": "/usr/bin/mpirun", "mpirun_args": ["--oversubscribe"]}}))
        ex = spec.execution
        assert ex.args == ("-n", "5", "1.5")
        assert dict(ex.env) == {"A": "1", "B": "2"}
        assert (ex.wd, ex.stdin, ex.stdout, ex.stderr, ex.venv) == ("w", "in", "out", "err", "/v")
        assert ex.modules == ("m1", "m2")
        assert ex.model == "openmpi"
        assert dict(ex.model_opts) == {"mpirun": "/usr/bin/mpirun", "mpirun_args": ("--oversubscribe",)}

    @pytest.mark.parametrize("venv", ["", " ", "\t \n"])
    def test_empty_venv_means_no_venv(self, venv):
        # upstream's rule; EasyVVUQ's templates default 'venv' to ''
        spec = parse_job(job(execution={"exec": "python3", "venv": venv, "stdout": "o"}))
        assert spec.execution.venv is None
        assert "venv" not in spec.execution.to_dict()
        assert spec.execution.stdout == "o"
        # only the venv's emptiness is forgiven: a venv of another type, and the other empty fields,
        # are still errors
        for wrong in (0, False, [], {}, [venv]):
            bad(job(execution={"exec": "x", "venv": wrong}), "execution.venv")
        for key in ("exec", "wd", "stdin", "stdout", "stderr"):
            bad(job(execution={"exec": "x", "venv": venv, key: ""}), f"execution.{key}")

    def test_modules_as_string(self):
        assert parse_job(job(execution={"exec": "x", "modules": "gcc"})).execution.modules == ("gcc",)

    def test_modules_as_list(self):
        assert parse_job(job(execution={"exec": "x", "modules": ["gcc", "mpi"]})).execution.modules == ("gcc", "mpi")

    @pytest.mark.parametrize("model", ["default", "threads", "openmpi", "intelmpi", "srunmpi"])
    def test_models(self, model):
        assert parse_job(job(execution={"exec": "x", "model": model})).execution.model == model

    def test_numcores_int(self):
        spec = parse_job(job(resources={"numCores": 4}))
        assert spec.resources.cores == Range(4, 4)
        assert spec.resources.cores.exact
        req = spec.resources.request()
        assert (req.cores_min, req.cores_max, req.nodes_min) == (4, 4, None)

    def test_numcores_exact(self):
        spec = parse_job(job(resources={"numCores": {"exact": 3}}))
        assert spec.resources.cores == Range(3, 3)

    def test_numcores_min_max(self):
        spec = parse_job(job(resources={"numCores": {"min": 2, "max": 6}}))
        assert spec.resources.cores == Range(2, 6)
        assert not spec.resources.cores.exact
        req = spec.resources.request()
        assert (req.cores_min, req.cores_max) == (2, 6)

    def test_numcores_min_only_means_as_much_as_free(self):
        spec = parse_job(job(resources={"numCores": {"min": 2}}))
        assert spec.resources.cores == Range(2, None)
        req = spec.resources.request()
        assert req.cores_min == 2 and req.cores_max == UNLIMITED

    def test_numcores_max_only(self):
        assert parse_job(job(resources={"numCores": {"max": 3}})).resources.cores == Range(1, 3)

    def test_numcores_min_equals_max(self):
        assert parse_job(job(resources={"numCores": {"min": 2, "max": 2}})).resources.cores == Range(2, 2)

    def test_numnodes_only(self):
        spec = parse_job(job(resources={"numNodes": 2}))
        assert spec.resources.nodes == Range(2, 2)
        assert spec.resources.cores is None
        req = spec.resources.request()
        assert (req.cores_min, req.cores_max, req.nodes_min, req.nodes_max) == (0, 0, 2, 2)

    def test_numnodes_and_numcores(self):
        spec = parse_job(job(resources={"numNodes": {"min": 1, "max": 3}, "numCores": 2}))
        req = spec.resources.request()
        assert (req.cores_min, req.cores_max, req.nodes_min, req.nodes_max) == (2, 2, 1, 3)

    def test_nodecrs(self):
        spec = parse_job(job(resources={"numNodes": 1, "nodeCrs": {"gpu": 2, "mem": 1024}}))
        assert spec.resources.gpus == 2 and spec.resources.mem_mb == 1024
        req = spec.resources.request()
        assert req.gpus == 2 and req.mem_mb == 1024

    def test_tags(self):
        assert parse_job(job(resources={"tags": ["a", "b"]})).resources.tags == ("a", "b")
        assert parse_job(job(resources={"tags": "a"})).resources.tags == ("a",)

    @pytest.mark.parametrize("wt,seconds", [("1h30m", 5400), ("90s", 90), ("10m5s", 605), ("2h", 7200),
                                            ("1h0m1s", 3601), (" 10m ", 600)])
    def test_wt(self, wt, seconds):
        spec = parse_job(job(resources={"wt": wt}))
        assert spec.resources.wt == seconds
        assert spec.resources.wt_text == wt

    def test_iteration_start_stop(self):
        spec = parse_job(job(iteration={"start": 2, "stop": 5}))
        assert spec.iteration == IterationSpec(2, 5)
        assert len(spec.iteration) == 3
        assert spec.iteration.value(3) == "3"

    def test_iteration_stop_only(self):
        assert parse_job(job(iteration={"stop": 4})).iteration == IterationSpec(0, 4)

    def test_iteration_values(self):
        spec = parse_job(job(iteration={"values": ["a", 7, 1.5]}))
        it = spec.iteration
        assert (it.start, it.stop, len(it)) == (0, 3, 3)
        assert [it.value(i) for i in range(3)] == ["a", "7", "1.5"]

    def test_dependencies_str(self):
        assert parse_job(job(dependencies={"after": "a"})).after == ("a",)

    def test_dependencies_list(self):
        spec = parse_job(job(iteration={"stop": 3}, dependencies={"after": ["a", "a:3", "a:${it}"]}))
        assert spec.after == ("a", "a:3", "a:${it}")

    def test_dependencies_empty(self):
        assert parse_job(job(dependencies={})).after == ()

    def test_iteration_scheduler_forms(self):
        spec = parse_job(job(iteration={"stop": 4},
                             resources={"numCores": {"min": 2, "scheduler": {"name": "split-into",
                                                                             "params": {"parts": 2}}}}))
        assert spec.resources.cores == Range(2, None, "split-into", (("parts", 2),))
        spec = parse_job(job(iteration={"stop": 4}, resources={"numCores": {"min": 1, "scheduler": "Maximum-Iters"}}))
        assert spec.resources.cores.scheduler == "maximum-iters"
        spec = parse_job(job(iteration={"stop": 4}, resources={"numNodes": {"scheduler": "split-into"}}))
        assert spec.resources.nodes.scheduler == "split-into"

    def test_templated_flag(self):
        assert parse_job(job(execution={"exec": "x", "args": ["${it}"]})).execution.templated
        assert parse_job(job(execution={"exec": "x", "env": {"N": "$ncores"}})).execution.templated
        assert not parse_job(job(execution={"exec": "x", "args": ["$HOME", "${jname}"]})).execution.templated

    def test_attributes_kept(self):
        assert parse_job(job(attributes={"k": [1, 2]})).attributes == {"k": [1, 2]}

    def test_input_not_mutated(self):
        desc = job(resources={"numCores": {"min": 1, "scheduler": {"name": "split-into", "params": {"parts": 2}}}},
                   iteration={"stop": 4}, dependencies={"after": "a"})
        before = copy.deepcopy(desc)
        parse_job(desc)
        assert desc == before

    def test_equal_requests_are_shared(self):
        a = parse_job(job(resources={"numCores": 3}))
        b = parse_job(job(name="k", resources={"numCores": {"exact": 3}}))
        assert a.resources.request() is b.resources.request()


RICH = {
    "name": "rich",
    "execution": {"exec": "/usr/bin/app", "args": ["-n", "${ncores}", "x"], "env": {"A": "1", "B": "$it"},
                  "wd": "work/${it}", "stdin": "in.txt", "stdout": "out.${it}", "stderr": "err.${it}",
                  "modules": ["gcc", "openmpi"], "venv": "/venv", "model": "openmpi",
                  "model_opts": {"mpirun": "/opt/mpirun", "mpirun_args": ["--bind-to", "core"],
                                 "srun_args": ["--exclusive"]}},
    "resources": {"numCores": {"min": 2, "scheduler": {"name": "split-into", "params": {"parts": 3}}},
                  "numNodes": {"min": 1, "max": 2}, "wt": "1h30m", "nodeCrs": {"gpu": 1, "mem": 512},
                  "tags": ["fast"]},
    "iteration": {"start": 3, "stop": 9},
    "dependencies": {"after": ["a", "b:2", "c:${it}"]},
    "attributes": {"partition": 1},
}


class TestRoundTrip:
    def test_rich_round_trip(self):
        spec = parse_job(copy.deepcopy(RICH))
        assert parse_job(spec.to_dict()) == spec

    def test_rich_round_trip_via_json(self):
        import json
        spec = parse_job(copy.deepcopy(RICH))
        assert parse_job(json.loads(json.dumps(spec.to_dict()))) == spec

    @pytest.mark.parametrize("desc", [
        job(),
        job(execution={"script": "echo $$; echo ${it}"}, iteration={"values": ["x", "y"]}),
        job(resources={"numNodes": 2}),
        job(resources={"numCores": {"min": 2, "max": 2}}),
        job(resources={"numCores": {"min": 2}}),
        job(resources={"numCores": {"max": 5}, "wt": "90s"}),
        job(resources={"numNodes": {"min": 1, "scheduler": "maximum-iters"}}, iteration={"stop": 3}),
        job(execution={"exec": "x", "model": "threads", "model_opts": {"srun_args": ["-v"]}}),
    ])
    def test_round_trip_variants(self, desc):
        spec = parse_job(desc)
        assert parse_job(spec.to_dict()) == spec

    def test_round_trip_is_not_trivially_equal(self):
        spec = parse_job(copy.deepcopy(RICH))
        other = copy.deepcopy(RICH)
        other["resources"]["numNodes"]["max"] = 3
        assert parse_job(other) != spec


# ====================================================================== variables
SUBMIT = {"rcnt": 7, "uniq": "U", "sname": "local", "date": "D", "time": "T", "dateTime": "DT", "jname": "job1"}
LAUNCH = {"root_wd": "/wd", "ncores": 4, "nnodes": 2, "nlist": "n1,n2", "it": 3, "itval": "v3"}


class TestVariables:
    def test_braced_and_bare(self):
        assert substitute("a${it}b", LAUNCH, launch=True) == "a3b"
        assert substitute("a $it b", LAUNCH, launch=True) == "a 3 b"
        assert substitute("$it", LAUNCH, launch=True) == "3"

    def test_bare_name_needs_word_boundary(self):
        assert substitute("$itx", LAUNCH, launch=True) == "$itx"
        assert substitute("$it_1", LAUNCH, launch=True) == "$it_1"
        assert substitute("$it.txt", LAUNCH, launch=True) == "3.txt"
        assert substitute("$itval", LAUNCH, launch=True) == "v3"
        assert substitute("${itval}x", LAUNCH, launch=True) == "v3x"

    @pytest.mark.parametrize("text", ["$HOME", "${PATH}", "$$", "$1", "echo $$ $? $#", "${HOME}/x", "$", "a$",
                                      "${it", "$ {it}", "${ it}"])
    def test_foreign_names_untouched(self, text):
        assert substitute(text, LAUNCH, launch=True) == text
        assert substitute(text, SUBMIT) == text

    def test_escaped(self):
        assert substitute("$${it}", LAUNCH, launch=True) == "${it}"
        assert substitute("$$it", LAUNCH, launch=True) == "$it"
        # as upstream's two passes: the submit pass consumes one dollar, the launch pass substitutes
        text = substitute("x $${it} ${jname}", SUBMIT)
        assert text == "x ${it} job1"
        assert substitute(text, LAUNCH, launch=True) == "x 3 job1"
        # three dollars: a literal ${it} at the end
        assert substitute(substitute("$$${it}", SUBMIT), LAUNCH, launch=True) == "${it}"

    def test_escaped_submit_name(self):
        text = substitute("$${jname}", SUBMIT)
        assert text == "${jname}"
        assert substitute(text, LAUNCH, launch=True) == "${jname}"

    def test_submit_names_only_at_submit(self):
        for name, value in SUBMIT.items():
            assert substitute("${%s}" % name, SUBMIT) == str(value)
            assert substitute("$%s" % name, SUBMIT) == str(value)
            assert substitute("${%s}" % name, {**SUBMIT, **LAUNCH}, launch=True) == "${%s}" % name

    def test_launch_names_only_at_launch(self):
        for name, value in LAUNCH.items():
            assert substitute("${%s}" % name, LAUNCH, launch=True) == str(value)
            assert substitute("${%s}" % name, {**SUBMIT, **LAUNCH}) == "${%s}" % name

    def test_names_lists(self):
        assert set(SUBMIT_VARIABLES) == set(SUBMIT)
        assert set(LAUNCH_VARIABLES) == set(LAUNCH)

    def test_missing_value_kept(self):
        assert substitute("${it}", {}, launch=True) == "${it}"

    def test_value_with_quote_verbatim(self):
        assert substitute('say "${jname}"', {"jname": 'a"b\\n'}) == 'say "a"b\\n"'
        assert substitute("${it}", {"it": '"}],{'}, launch=True) == '"}],{'

    def test_value_with_backslash_and_group_refs(self):
        assert substitute("${nlist}", {"nlist": r"\1\g<0>"}, launch=True) == r"\1\g<0>"

    def test_date_time_datetime_distinct(self):
        assert substitute("$date/$time/$dateTime", SUBMIT) == "D/T/DT"

    def test_substitute_tree_keeps_keys(self):
        tree = {"${it}": ["$it", {"k$it": "${ncores}"}], "n": 5, "b": None, "t": True}
        out = substitute_tree(tree, LAUNCH, launch=True)
        assert out == {"${it}": ["3", {"k$it": "4"}], "n": 5, "b": None, "t": True}
        assert tree["${it}"][0] == "$it"  # input untouched

    def test_uses_launch_variables(self):
        assert uses_launch_variables({"args": ["a", "${it}"]})
        assert uses_launch_variables(["$nlist"])
        assert uses_launch_variables("$${it}")  # needs the launch pass to unescape
        assert not uses_launch_variables({"${it}": "x"})  # keys do not count
        assert not uses_launch_variables({"args": ["$HOME", "${jname}", "$itx", 5]})
        assert not uses_launch_variables("plain")


# ====================================================================== wall time
class TestWalltime:
    @pytest.mark.parametrize("text,seconds", [("1h30m", 5400), ("90s", 90), ("10m5s", 605), ("1h", 3600),
                                              ("0h1s", 1), ("100m", 6000)])
    def test_valid(self, text, seconds):
        assert parse_walltime(text) == seconds

    @pytest.mark.parametrize("text", ["5x", "", "0s", 12, None, "1s1m", "m", "1 h", "1d"])
    def test_invalid(self, text):
        with pytest.raises(JobDescriptionError) as info:
            parse_walltime(text, job="w")
        assert info.value.job == "w" and info.value.field == "resources.wt"
        assert "job 'w'" in str(info.value) and "resources.wt" in str(info.value)


# ====================================================================== node specs
class TestNodesOption:
    def test_count_only(self):
        assert parse_nodes_option("4") == [NodeSpec("n0", 4)]

    def test_named(self):
        assert parse_nodes_option("a:2,b:3") == [NodeSpec("a", 2), NodeSpec("b", 3)]

    def test_unnamed_numbered(self):
        nodes = parse_nodes_option("2,3,1")
        assert [(n.name, n.cores) for n in nodes] == [("n0", 2), ("n1", 3), ("n2", 1)]

    def test_mixed(self):
        assert [(n.name, n.cores) for n in parse_nodes_option("a:2, 3")] == [("a", 2), ("n1", 3)]

    def test_gpus_and_mem(self):
        nodes = parse_nodes_option("2,2", gpus=(0, 1), mem_mb=100)
        assert all(n.gpus == (0, 1) and n.mem_mb == 100 for n in nodes)

    @pytest.mark.parametrize("spec", ["", "  ", "0", "x", "a:x", "a:2,a:3", "n1:2,3", "a:-1", "a:", ":2", "2,,3",
                                      "a b:2", None])
    def test_errors(self, spec):
        with pytest.raises(ResourceSpecError):
            parse_nodes_option(spec)


class TestHostlist:
    def test_padded_ranges(self):
        names = expand_hostlist("n[001-016,020],gpu[1-2]")
        assert len(names) == 19
        assert names[:3] == ["n001", "n002", "n003"]
        assert names[15:] == ["n016", "n020", "gpu1", "gpu2"]

    def test_single(self):
        assert expand_hostlist("n1") == ["n1"]

    def test_plain_list(self):
        assert expand_hostlist("a,b") == ["a", "b"]

    def test_cartesian(self):
        assert expand_hostlist("r[1-2]-n[1-2]") == ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]

    def test_simple_range(self):
        assert expand_hostlist("n[1-3]") == ["n1", "n2", "n3"]

    def test_padding_over_width(self):
        assert expand_hostlist("n[08-10]") == ["n08", "n09", "n10"]

    def test_suffix(self):
        assert expand_hostlist("n[1-2]x,y") == ["n1x", "n2x", "y"]

    @pytest.mark.parametrize("text", ["n[1-", "n[3-1]", "n[a-b]", "", "n1]", "n[1-2", "n[]", "n[1-2]]", "n[\u00b2]", None])
    def test_errors(self, text):
        with pytest.raises(ResourceSpecError):
            expand_hostlist(text)


class TestCounts:
    def test_expand(self):
        assert expand_counts("4(x2),2") == [4, 4, 2]
        assert expand_counts("3") == [3]
        assert expand_counts("1,2,3") == [1, 2, 3]

    def test_compress(self):
        assert compress_counts([2, 2, 2, 1]) == "2(x3),1"
        assert compress_counts([1]) == "1"
        assert compress_counts([1, 2, 2]) == "1,2(x2)"
        assert compress_counts([]) == ""

    def test_round_trip(self):
        rng = random.Random(5)
        for _ in range(200):
            counts = [rng.choice([1, 2, 48]) for _ in range(rng.randint(1, 12))]
            assert expand_counts(compress_counts(counts)) == counts

    @pytest.mark.parametrize("spec", ["", "x", "4(x)", "4(2)", "4(x2", "4,", "-1", "4(x2)3", None])
    def test_errors(self, spec):
        with pytest.raises(ResourceSpecError):
            expand_counts(spec)

    def test_slurm_nodes(self):
        nodes = slurm_nodes("n[1-3]", "4(x2),2")
        assert [(n.name, n.cores) for n in nodes] == [("n1", 4), ("n2", 4), ("n3", 2)]

    def test_slurm_nodes_broadcast(self):
        nodes = slurm_nodes("n[1-4]", "8")
        assert [(n.name, n.cores) for n in nodes] == [(f"n{i}", 8) for i in range(1, 5)]

    def test_slurm_nodes_limits(self):
        nodes = slurm_nodes("n[1-4]", "1,2,3,4", 1, 3)
        assert [(n.name, n.cores) for n in nodes] == [("n2", 2), ("n3", 3)]
        assert [n.name for n in slurm_nodes("n[1-4]", "2", 2)] == ["n3", "n4"]
        assert [n.name for n in slurm_nodes("n[1-4]", "2", None, 1)] == ["n1"]

    def test_slurm_nodes_mismatch(self):
        with pytest.raises(ResourceSpecError, match="3 nodes"):
            slurm_nodes("n[1-3]", "4,4")
        with pytest.raises(ResourceSpecError):
            slurm_nodes("n1", "4(x2)")

    def test_range_lists_inside_brackets(self):
        assert expand_hostlist("n[0-3,8,10-11]") == [f"n{i}" for i in (0, 1, 2, 3, 8, 10, 11)]

    @pytest.mark.parametrize("text", ["a", "3-1", "1-", "0-3,x", "\u00b2", "1-\u00b2"])
    def test_range_list_errors(self, text):
        with pytest.raises(ResourceSpecError):
            expand_hostlist(f"n[{text}]")


# ====================================================================== iteration schedulers
def sizes(sizer, n):
    return [sizer.size(i) for i in range(n)]


# upstream 0.14.2's maximum-iters sizes (reference, section 4.3): (min, iterations, available, parts, sizes)
MAXIMUM_ITERS_GOLDEN = [
    (1, 10, 4, None, [1, 1, 1, 1, 1, 1, 2, 1, 1, 2]),
    (1, 3, 8, None, [2, 3, 3]),
    (2, 5, 8, None, [2, 3, 3, 4, 4]),
    (None, 7, 16, None, [2, 2, 2, 2, 2, 3, 3]),
    (1, 4, 10, 3, [2, 2, 3, 3]),
    (3, 5, 8, None, [4, 4, 4, 4, 8]),
]


@pytest.mark.parametrize("minimum,n,avail,parts,expected", MAXIMUM_ITERS_GOLDEN)
def test_maximum_iters_golden(minimum, n, avail, parts, expected):
    params = (("parts", parts),) if parts else ()
    assert sizes(make_sizer("maximum-iters", params, n, avail, minimum), n) == expected
    assert sizes(MaximumIters(n, avail, minimum), n) == expected


@pytest.mark.parametrize("minimum,n,avail,parts,expected", [
    (1, 3, 8, None, [2, 2, 2]),
    (None, 7, 16, None, [2] * 7),
    (1, 4, 10, 3, [3, 3, 3, 3]),
    (2, 5, 8, None, [2] * 5),  # upstream: 1s (min violated)
    (3, 5, 8, None, [3] * 5),  # upstream: 1s
    (1, 10, 4, None, [1] * 10),  # upstream: error
])
def test_split_into_golden(minimum, n, avail, parts, expected):
    params = (("parts", parts),) if parts else ()
    assert sizes(make_sizer("split-into", params, n, avail, minimum), n) == expected
    assert sizes(SplitInto(n, avail, minimum, parts), n) == expected


def test_split_into_zero_without_min():
    with pytest.raises(JobDescriptionError) as info:
        make_sizer("split-into", (), 10, 4, None, job="s", field="resources.numCores")
    assert "resolved to zero" in str(info.value)
    assert info.value.job == "s" and info.value.field == "resources.numCores.scheduler"
    with pytest.raises(JobDescriptionError):
        make_sizer("split-into", (("parts", 5),), 2, 4, None)


@pytest.mark.parametrize("name", ["maximum-iters", "split-into"])
def test_minimum_above_available(name):
    with pytest.raises(JobDescriptionError) as info:
        make_sizer(name, (), 3, 4, 5, job="m")
    assert info.value.job == "m"


def upstream_maximum_iters(n, avail, minimum):
    """Upstream's MaximumIters.generate, as described in the reference, section 4.3."""
    pmin = minimum or 1
    out = []
    if n * pmin <= avail:
        left = avail
        for i in range(n):
            r = left // (n - i)
            left -= r
            out.append(r)
        return out
    rounds = -(-n // (avail // pmin))
    left_its = n
    rnd = 0
    while left_its > 0:
        in_round = -(-left_its // (rounds - rnd))
        round_res = avail
        for k in range(in_round):
            r = round_res // (in_round - k)
            round_res -= r
            out.append(r)
        left_its -= in_round
        rnd += 1
    return out


def test_upstream_reimplementation_matches_golden():
    assert upstream_maximum_iters(10, 4, 1) == [1, 1, 1, 1, 1, 1, 2, 1, 1, 2]
    assert upstream_maximum_iters(5, 8, 3) == [4, 4, 4, 4, 8]


def test_maximum_iters_matches_upstream_loop():
    rng = random.Random(1234)
    cases = [(n, a, m) for n in range(1, 25) for a in range(1, 25) for m in (None, 1, 2, 3, 5) if (m or 1) <= a]
    cases += [(rng.randint(1, 5000), rng.randint(1, 300), rng.choice([None, 1, 2, 7, 16])) for _ in range(300)]
    for n, avail, minimum in cases:
        if (minimum or 1) > avail:
            continue
        got = sizes(MaximumIters(n, avail, minimum), n)
        assert got == upstream_maximum_iters(n, avail, minimum), (n, avail, minimum)
        assert min(got) >= (minimum or 1)


def test_maximum_iters_large_is_constant_time():
    import time
    t0 = time.perf_counter()
    sizer = make_sizer("maximum-iters", (), 10 ** 7, 48, 1)
    # 208334 rounds: the first 208302 hold 48 iterations (1 core each), the last 32 hold 47
    # iterations (46 x 1 core, then 2 cores for the last of each round)
    assert sizer.size(0) == 1 and sizer.size(48 * 208302 - 1) == 1
    assert sizer.size(48 * 208302 + 45) == 1 and sizer.size(48 * 208302 + 46) == 2
    assert sizer.size(10 ** 7 - 1) == 2
    assert time.perf_counter() - t0 < 0.1


# ---------------------------------------------------------------- shared specs
def test_equal_executions_and_resources_share_one_spec_and_different_ones_do_not():
    res = {"numCores": {"min": 2, "max": 4}, "wt": "10s"}
    a = parse_job({"name": "a", "execution": {"exec": "/bin/echo", "args": ["x"]}, "resources": res})
    b = parse_job({"name": "b", "execution": {"exec": "/bin/echo", "args": ["x"]}, "resources": dict(res)})
    c = parse_job({"name": "c", "execution": {"exec": "/bin/echo", "args": ["y"]},
                   "resources": {"numCores": {"min": 2, "max": 5}, "wt": "10s"}})
    assert a.execution is b.execution and a.resources is b.resources
    assert c.execution is not a.execution and c.execution.args == ("y",)
    assert c.resources is not a.resources and c.resources.cores.max == 5 and c.resources.wt == 10


def test_an_execution_seen_before_is_still_checked_in_another_job():
    parse_job({"name": "ok", "execution": {"exec": "/bin/true"}})
    with pytest.raises(JobDescriptionError) as err:
        parse_job({"name": "bad", "execution": {"exec": "/bin/true", "script": "true"}})
    assert "bad" in str(err.value) and "exclusive" in str(err.value)
    with pytest.raises(JobDescriptionError, match="execution.exec"):
        parse_job({"name": "big", "execution": {"exec": 1 << 70}})  # not even JSON-encodable


def test_dependency_lists_are_shared_but_numbers_still_become_names():
    a = parse_job({"name": "a", "execution": {"exec": "x"}, "dependencies": {"after": ["g", "h:1"]}})
    b = parse_job({"name": "b", "execution": {"exec": "x"}, "dependencies": {"after": ["g", "h:1"]}})
    assert a.after is b.after == ("g", "h:1")
    assert parse_job({"name": "c", "execution": {"exec": "x"}, "dependencies": {"after": [7]}}).after == ("7",)
    with pytest.raises(JobDescriptionError, match="dependencies.after"):
        parse_job({"name": "d", "execution": {"exec": "x"}, "dependencies": {"after": [{"job": "g"}]}})
