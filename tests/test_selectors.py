"""Selectors, trial lists, suite files, and the CLI's one-line errors for bad input."""

import pytest

from diffbench.selectors import SelectorError, expand, parse, parse_int_list
from diffbench.suite import Suite, SuiteError, load_suite, suite_from_dict
from diffbench.suite import expand as expand_suite
from tests.helpers import error_lines, write_suite


def test_a_list_value_expands_to_one_spec_per_value():
    assert expand("truncated[t_min=100,t_max=[300,600]]") == [
        ("truncated", {"t_min": 100, "t_max": 300}),
        ("truncated", {"t_min": 100, "t_max": 600}),
    ]


def test_several_lists_expand_to_their_product():
    specs = expand("x[a=[1,2],b=[p,q,r]]")
    assert len(specs) == 6
    assert ("x", {"a": 2, "b": "r"}) in specs


def test_a_bare_name_is_one_spec_without_params():
    assert expand("shared-noise") == [("shared-noise", {})]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("x[v=3]", 3),
        ("x[v=-3]", -3),
        ("x[v=0.5]", 0.5),
        ("x[v=1e-3]", 1e-3),
        ("x[v=true]", True),
        ("x[v=False]", False),
        ("x[v=l1]", "l1"),
        ("x[v='3']", "3"),
        ('x[v="a,b]"]', "a,b]"),
    ],
)
def test_values_are_typed(text, value):
    name, params = parse(text)
    assert name == "x"
    assert params["v"] == value and type(params["v"]) is type(value)


def test_spaces_around_tokens_are_ignored():
    assert parse("truncated[ t_min = 1 , t_max = [ 2 , 3 ] ]") == ("truncated", {"t_min": 1, "t_max": [2, 3]})


# Regression (bug found by this suite): parse() dropped the spaces inside quoted values too.
def test_quoted_values_keep_their_spaces():
    assert parse("x[label='two words']") == ("x", {"label": "two words"})


# Regression (issue 24): spaces inside an unquoted value were dropped, so root=data/if space read data/ifspace.
@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("image-folder[root=data/if space]", {"root": "data/if space"}),
        ("image-folder[ root = data/if space , size = 16 ]", {"root": "data/if space", "size": 16}),
        ("diffusers[path=my models/ddpm,prompt=a {} photo]", {"path": "my models/ddpm", "prompt": "a {} photo"}),
        ("x[v=[a b, c  d]]", {"v": ["a b", "c  d"]}),
        ("x[v=1 2]", {"v": "1 2"}),
        ("x[v=\ta\u3000b\n]", {"v": "a\u3000b"}),
    ],
)
def test_unquoted_values_keep_the_spaces_inside_them(text, params):
    assert parse(text)[1] == params


@pytest.mark.parametrize("text", ["trun cated", "x[t_ min=1]", "x[a b=1]", "x[a=1] y"])
def test_a_space_inside_a_name_is_refused_not_dropped(text):
    with pytest.raises(SelectorError, match="malformed selector"):
        parse(text)


def test_a_malformed_selector_with_a_line_break_is_still_one_line():
    with pytest.raises(SelectorError) as info:
        parse("x[a=1\n]\u2028y")
    assert "\n" not in str(info.value) and "\u2028" not in str(info.value)
    assert str(info.value).startswith("malformed selector 'x[a=1\\n]\\u2028y': unexpected 'y' at position 8;")


def test_an_image_folder_selector_reads_the_folder_whose_name_has_a_space(tmp_path):
    from diffbench.suite import instantiate

    root = tmp_path / "if space"
    (dataset,) = instantiate("dataset", f"image-folder[root={root},size=8]")
    assert dataset.params["root"] == str(root)
    assert repr(dataset) == f"image-folder[root={root},size=8]"
    assert parse(repr(dataset)) == parse(f"image-folder[root={root},size=8]"), "a label parses back to its params"


def test_a_diffusers_selector_reads_the_folder_whose_name_has_a_space(tmp_path):
    pytest.importorskip("diffusers")
    from diffbench.suite import instantiate
    from tests.test_diffusers import save_class_unet

    folder = save_class_unet(tmp_path / "my models" / "ddpm")
    (tmp_path / "mymodels").mkdir()  # the folder the spaces-dropped path named
    (denoiser,) = instantiate("denoiser", f"diffusers[path={folder}]")
    assert denoiser.params["path"] == str(folder)


@pytest.mark.parametrize(
    "text", ["x[", "x[a]", "x[a=1", "x]]", "", "x[a=1,a=2]", "x[a=]", "x[a=[1,2]", "x[a='1]", "[a=1]", "x[a=1]y"]
)
def test_malformed_selectors_say_so(text):
    with pytest.raises(SelectorError, match="malformed selector") as info:
        expand(text)
    assert "e.g. truncated[t_min=100,t_max=[300,600]]" in str(info.value)


def test_a_repeated_param_is_named():
    with pytest.raises(SelectorError, match="param 'a' given twice"):
        parse("x[a=1,a=2]")


@pytest.mark.parametrize(("text", "values"), [("1", [1]), ("1,2,4,8", [1, 2, 4, 8]), (" 3, 5 ", [3, 5])])
def test_int_lists(text, values):
    assert parse_int_list(text) == values


@pytest.mark.parametrize("text", ["0", "a", "1,,2", "-1", "", "1.5", "2,"])
def test_bad_int_lists(text):
    with pytest.raises(SelectorError, match="trials must be positive integers"):
        parse_int_list(text)


class TestSuites:
    def test_builtin_quick_suite_loads(self):
        suite = load_suite("quick")
        assert suite.datasets == ["spirals"] and suite.estimators == ["full-mc", "shared-noise", "truncated"]
        assert suite.trials == [1, 2, 4, 8, 16, 32] and suite.repeats >= 1

    def test_a_suite_file_loads_with_its_train_table(self, tmp_path):
        suite = load_suite(str(write_suite(tmp_path / "s.toml", train={"steps": 7, "lr": 1})))
        assert suite.devices == ["cpu"] and suite.trials == [1, 2]
        assert suite.train == {"steps": 7, "lr": 1}

    def test_a_scalar_is_a_one_item_list(self):
        suite = suite_from_dict({"estimators": "full-mc", "trials": 4, "devices": "cpu"})
        assert suite.estimators == ["full-mc"] and suite.trials == [4] and suite.devices == ["cpu"]

    @pytest.mark.parametrize(
        ("data", "match"),
        [
            (
                {"estimator": ["full-mc"]},
                r"unknown key 'estimator'; did you mean 'estimators'\? \(known keys: datasets, ",
            ),
            ({"trials": [1, -2]}, "trials must be positive"),
            ({"trials": [0]}, "trials must be positive"),
            ({"trials": []}, "non-empty list"),
            ({"devices": ["tpu"]}, "unknown device 'tpu'"),
            ({"schedule": "quadratic"}, "unknown schedule"),
            ({"quality": "fast"}, "unknown quality 'fast'; choose from full, accuracy"),
            ({"seed": -1}, "'seed' must be an integer from 0 to"),
            ({"repeats": True}, "'repeats' must be int"),
            ({"datasets": [1]}, "list of selector strings"),
            (
                {"train": {"stepz": 10}},
                r"unknown \[train\] key\(s\) \['stepz'\]; did you mean 'steps'\? "
                r"\(known: batch_size, flow_sigma, lr, objective, steps, or",
            ),
            ({"train": {"steps": 0}}, r"bad \[train\] settings"),
            ({"train": {"mlp": {"lr": -1.0}}}, r"bad \[train\] settings"),
            ({"train": 5}, r"\[train\] must be a table"),
        ],
    )
    def test_bad_suites_are_suite_errors(self, data, match):
        with pytest.raises(SuiteError, match=match):
            suite_from_dict(data, "my suite")

    def test_bad_toml_and_missing_files(self, tmp_path):
        bad = tmp_path / "bad.toml"
        bad.write_text("trials = [1, 2\n")
        with pytest.raises(SuiteError, match="not valid TOML"):
            load_suite(str(bad))
        with pytest.raises(SuiteError, match="does not exist"):
            load_suite(str(tmp_path / "missing.toml"))
        with pytest.raises(SuiteError, match="unknown suite 'quik'"):
            load_suite("quik")

    def test_train_settings_layer_denoiser_defaults_suite_and_per_denoiser_tables(self):
        from diffbench.plugins import get

        mlp = get("denoiser", "mlp").cls()
        suite = suite_from_dict({"train": {"steps": 10, "lr": 0.5, "mlp": {"lr": 0.25}}})
        settings = suite.train_settings(mlp)
        assert (settings.steps, settings.lr) == (10, 0.25)
        assert Suite().train_settings(mlp).steps == 4000

    def test_a_datasets_train_settings_sit_between_the_denoisers_and_the_suites(self):
        from diffbench.plugins import get

        unet, digits = get("denoiser", "unet").cls(), get("dataset", "digits").cls()
        mnist5k = get("dataset", "mnist5k").cls()
        assert Suite().train_settings(unet, digits) == Suite().train_settings(unet), "digits asks for nothing"
        own = Suite().train_settings(unet, mnist5k)
        assert own.batch_size == mnist5k.train["batch_size"] != unet.train["batch_size"]
        assert own.steps == mnist5k.train.get("steps", unet.train["steps"])
        suite = suite_from_dict({"train": {"batch_size": 16, "unet": {"steps": 7}}})
        assert (suite.train_settings(unet, mnist5k).batch_size, suite.train_settings(unet, mnist5k).steps) == (16, 7)

    def test_a_suite_expands_to_the_grid(self):
        suite = suite_from_dict({"estimators": ["shared-noise", "truncated[t_max=[100,200]]"], "trials": [1, 2]})
        cells = expand_suite(suite, ["cpu"])
        assert len(cells) == 3 * 2
        labels = [repr(c.estimator) for c in cells[::2]]
        assert labels == ["shared-noise", "truncated[t_max=100]", "truncated[t_max=200]"]
        assert {c.trials for c in cells} == {1, 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "truncated[t_max=[1,2"], "malformed selector 'truncated[t_max=[1,2'"),
        (["-e", "shared-nose"], "unknown estimator 'shared-nose'; did you mean 'shared-noise'?"),
        (["-e", "truncated[t_maxx=5]"], "has no param 't_maxx'; did you mean 't_max'?"),
        (["-e", "truncated[t_max=abc]"], "param 't_max' must be int, got 'abc'"),
        (["-e", "truncated[t_min=9,t_max=3]"], "t_min <= t_max"),
        (["-d", "spirals[n_train=1]"], "n_train and n_test of at least 2"),
        (["--trials", "1,0"], "trials must be positive integers"),
        (["--suite", "nope"], "unknown suite 'nope'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2_before_training(cli, tmp_path, args, message):
    suite = write_suite(tmp_path / "tiny.toml")
    cache, out = tmp_path / "cache", tmp_path / "run"
    result = cli("run", "--suite", suite, "--cache", cache, "--out", out, *args)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("diffbench: error: ") and message in line, line
    assert not (cache.exists() and any(cache.iterdir())), "nothing was trained"
    assert not out.exists()


def test_a_list_param_takes_a_bracketed_value_as_one_value():
    assert expand("unet[mults=[1,2,2]]", list_params=["mults"]) == [("unet", {"mults": [1, 2, 2]})]
    assert expand("unet[mults=2]", list_params=["mults"]) == [("unet", {"mults": [2]})]
    grid = expand("unet[mults=[[1,2],[1,2,2]],channels=[16,32]]", list_params=["mults"])
    assert [p["mults"] for _, p in grid] == [[1, 2], [1, 2], [1, 2, 2], [1, 2, 2]]
    assert [p["channels"] for _, p in grid] == [16, 32, 16, 32]


def test_nested_lists_for_a_scalar_param_are_refused():
    with pytest.raises(SelectorError, match="takes no list"):
        expand("truncated[t_max=[[1,2]]]")
    with pytest.raises(SelectorError, match="nest at most two deep"):
        expand("unet[mults=[[[1]]]]", list_params=["mults"])


def test_suite_cells_give_unet_its_mults_list():
    suite = Suite(datasets=["digits"], denoisers=["unet[mults=[[1],[1,2]]]"], estimators=["shared-noise"], trials=[1])
    mults = [cell.denoiser.params["mults"] for cell in expand_suite(suite, ["cpu"])]
    assert mults == [[1], [1, 2]]


def test_a_builtin_suite_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_suite("full").denoisers == ["mlp", "resmlp", "unet", "dit"]
