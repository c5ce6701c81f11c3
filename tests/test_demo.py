"""The demo's train-step cache key: recipe values, not recipe text."""

from ppssl import demo


def test_train_key_ignores_recipe_comments_but_not_values(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# a comment\nepochs: 2\nlr: 0.003\n")
    monkeypatch.setattr(demo, "RECIPE", recipe)
    cfg, world = demo.DemoConfig(), {"classes": 3}
    key = demo._train_settings(cfg, world)
    recipe.write_text("# a longer comment, reworded\n# and a second line\nepochs: 2\nlr: 0.003\n")
    assert demo._train_settings(cfg, world) == key
    recipe.write_text("# a longer comment, reworded\nepochs: 4\nlr: 0.003\n")
    assert demo._train_settings(cfg, world) != key
