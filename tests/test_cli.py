"""The command line's own pieces: --dotenv parsing and what reaches the config."""

from minirr.cli import load_config, load_dotenv


def test_dotenv_lines_quotes_comments_and_export():
    env = {}
    load_dotenv('# a comment\nA=1\nexport B="two words"\nC=\'x=y\'\n\nnot a pair\nD = spaced \n', env)
    assert env == {"A": "1", "B": "two words", "C": "x=y", "D": "spaced"}


def test_dotenv_never_overrides_the_environment():
    env = {"A": "from the shell"}
    load_dotenv("A=from the file\n", env)
    assert env["A"] == "from the shell"


def test_dotenv_is_read_before_the_config_expands_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRR_TEST_PORT", "unset")   # so that teardown removes what --dotenv sets
    monkeypatch.delenv("MINIRR_TEST_PORT")
    (tmp_path / "vars.env").write_text("MINIRR_TEST_PORT=9123\n")
    (tmp_path / "rr.ini").write_text("[server]\napp = a:b\n[http]\naddress = 127.0.0.1:${MINIRR_TEST_PORT}\n")
    config = load_config(str(tmp_path / "rr.ini"), ["pool.num_workers=3"], str(tmp_path / "vars.env"))
    assert config.http.address == ("127.0.0.1", 9123)
    assert config.pool.num_workers == 3
    assert config.base_dir == str(tmp_path)
