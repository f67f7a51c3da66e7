"""Recipe switches: label smoothing, distillation, two-stage training, latent weight decay, configs.

The end-to-end runs use configs/test.py (a tiny VGG-Small on fake 8x8 data); the runs another
run reads (a float teacher, a stage 1) are trained once per module, one epoch (4 steps) each.
"""

import dataclasses
import importlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import config_checks, layers, models, optim, run, train, warm_start
from bnn_jax.data import DataSpec, normalize, sources
from bnn_jax.errors import InputError


def _test_config(**changes):
  from configs import test

  config = test.get_config()
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _variables(tree) -> dict[str, nnx.Variable]:
  """{"conv1.kernel": variable, ...} of a tree of nnx.Variables."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=layers.is_variable)[0]
  return {".".join(str(k.key) for k in path): v for path, v in flat}


def _mean_abs(kernel):
  """alpha as a fresh model computes it: mean |W| over every axis but the output channels."""
  return np.abs(np.asarray(kernel)).mean(axis=tuple(range(np.ndim(kernel) - 1)))


LOGITS = np.array([[2.0, -1.0, 0.5, 0.0], [-3.0, 4.0, 1.0, 2.5], [0.1, 0.2, 0.3, -5.0]])
TEACHER = np.array([[1.0, 0.0, 3.0, -1.0], [0.0, 5.0, 0.0, 1.0], [2.0, -2.0, 0.5, 0.5]])
LABELS = np.array([0, 3, 2])


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_is_cross_entropy_against_the_smoothed_targets(smoothing):
  k = LOGITS.shape[1]
  targets = (1 - smoothing) * np.eye(k)[LABELS] + smoothing / k
  expected = -(targets * _log_softmax(LOGITS)).sum(-1)
  got = train.cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), smoothing)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  if smoothing:  # really another loss than the plain cross-entropy
    assert not np.allclose(got, train.cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS)))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_is_t2_times_kl_of_the_softened_distributions(temperature):
  log_p, log_q = _log_softmax(TEACHER / temperature), _log_softmax(LOGITS / temperature)
  expected = temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
  got = train.distillation_loss(jnp.asarray(LOGITS), jnp.asarray(TEACHER), temperature)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert np.all(expected > 0)
  same = train.distillation_loss(jnp.asarray(TEACHER), jnp.asarray(TEACHER), temperature)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)  # KL(p || p) = 0


def test_training_loss_mixes_smoothed_ce_and_kd_by_the_weight():
  config = _test_config(**{"optimizer.label_smoothing": 0.2, "distill.weight": 0.75})
  config.distill.temperature = 2.0
  logits, labels, teacher = jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(TEACHER)
  loss, parts = train.training_loss(logits, labels, teacher, config.optimizer, config.distill)
  smoothed = train.cross_entropy(logits, labels, 0.2).mean()
  kd = train.distillation_loss(logits, teacher, 2.0).mean()
  np.testing.assert_allclose(loss, 0.25 * smoothed + 0.75 * kd, rtol=1e-6)
  np.testing.assert_allclose(parts["ce"], train.cross_entropy(logits, labels).mean(), rtol=1e-6)
  np.testing.assert_allclose(parts["kd"], kd, rtol=1e-6)
  alone, parts = train.training_loss(logits, labels, None, config.optimizer, config.distill)
  np.testing.assert_allclose(alone, smoothed, rtol=1e-6)
  assert set(parts) == {"ce"}


# ----------------------------------------------------------------------------- weight decay


def test_latent_weight_decay_shrinks_exactly_the_latent_weights_by_lr_wd_w():
  config = _test_config(
    **{
      "optimizer.name": "sgd",
      "optimizer.momentum": 0.9,
      "optimizer.schedule": "constant",
      "optimizer.learning_rate": 0.5,
      "optimizer.weight_decay": 0.0,
      "optimizer.scale_l2": 0.0,
      "optimizer.latent_weight_decay": 0.01,
    }
  )
  model = models.create_model(config, 4, (8, 8, 3), nnx.Rngs(0))
  params = nnx.split(model, nnx.Param, ...)[1]
  tx, _ = optim.make(config, steps_per_epoch=4)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  latent = set()
  for name, u in _variables(updates).items():
    p = _variables(params)[name]
    if isinstance(p, layers.LatentWeight):
      latent.add(name)
      # atol: the latent-weight clip returns (w + u) - w, rounded at float32 of |w| <= 1.
      np.testing.assert_allclose(u[...], -0.5 * 0.01 * p[...], rtol=1e-6, atol=1e-7)
    else:
      assert not np.any(np.asarray(u[...])), name
  assert latent == {f"conv{i}.kernel" for i in range(1, 6)}
  config.optimizer.latent_weight_decay = 0.0  # off (the default): nothing moves
  tx, _ = optim.make(config, steps_per_epoch=4)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates))


# ----------------------------------------------------------------------------- the kit


def test_float_weights_with_binary_activations_mirror_the_binary_net():
  binary = models.create_model(_test_config(), 4, (8, 8, 3), nnx.Rngs(0))
  stage1 = models.create_model(
    _test_config(**{"model.binary_weights": False}), 4, (8, 8, 3), nnx.Rngs(0)
  )
  b, s = _variables(nnx.state(binary)), _variables(nnx.state(stage1))
  alphas = {f"conv{i}.alpha" for i in range(1, 6)}
  assert set(b) - set(s) == alphas and set(s) <= set(b)
  assert all(b[k][...].shape == s[k][...].shape for k in s)
  for i in range(1, 6):
    assert isinstance(getattr(stage1, f"conv{i}"), nnx.Conv)  # float weights
    assert isinstance(getattr(stage1, f"act{i}"), layers.BinaryActivation)  # binary activations
  assert not any(isinstance(v, layers.LatentWeight) for v in s.values())
  # Float weights reach the forward pass: scaling a kernel by 3 changes the logits (it would
  # not through sign(W)), and the activations stay binary ({0, beta}).
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  before = stage1(x)
  stage1.conv5.kernel[...] = 3 * stage1.conv5.kernel[...]
  assert not np.allclose(before, stage1(x))
  assert set(np.unique(np.asarray(stage1.act1(x)))) <= {0.0, float(stage1.act1.beta[...])}


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("optimizer.label_smoothing", 1.0, "config.optimizer.label_smoothing = 1.0 is not allowed"),
    ("optimizer.latent_weight_decay", -1e-4, "latent_weight_decay = -0.0001 is not allowed"),
    ("distill.weight", 1.5, "config.distill.weight = 1.5 is not allowed; it must be a number in"),
    ("distill.temperature", 0.0, "config.distill.temperature = 0.0 is not allowed"),
    ("distill.teacher_workdir", 3, "config.distill.teacher_workdir = 3 has type int"),
    ("init.from_workdir", None, "config.init.from_workdir = None has type NoneType"),
    ("model.binary_weights", "no", "config.model.binary_weights = 'no' has type str"),
    ("init.stage1_epochs", -1.0, "config.init.stage1_epochs = -1.0 is not allowed"),
    (
      "init.stage1_epochs,model.binary",
      (1.0, False),
      "config.init.stage1_epochs = 1.0 trains a binary network in two stages; it needs "
      "config.model.binary = True and config.model.binary_weights = True",
    ),
    (
      "init.stage1_epochs,init.from_workdir",
      (1.0, "/elsewhere"),
      "config.init.from_workdir (/elsewhere) must then be",
    ),
    (
      "init.stage1_epochs,optimizer.warmup_epochs",
      (1.0, 1.0),
      "config.optimizer.warmup_epochs = 1.0 must be less than config.init.stage1_epochs = 1.0",
    ),
  ],
)
def test_bad_recipe_values_fail_in_one_sentence(tmp_path, key, value, message):
  config = _test_config()
  keys, values = (key.split(","), value) if "," in key else ([key], (value,))
  with config.ignore_type():
    for key, value in zip(keys, values):
      node = config
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_run_saved_before_the_recipe_keys_resumes_and_restores_as_before(tmp_path):
  config = _test_config()
  old = {k: v for k, v in run.flatten_config(config).items() if k not in run.ADDED_KEYS}
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert run.config_differences(config, run.read_config(tmp_path)) == []
  spec = DataSpec(4, (8, 8, 3), (0.5,) * 3, (0.25,) * 3)
  (tmp_path / "data_spec.json").write_text(json.dumps(dataclasses.asdict(spec)))
  loaded, _ = run.load_run(tmp_path)
  assert loaded.optimizer.label_smoothing == 0.0 and loaded.model.binary_weights is True
  assert loaded.distill.teacher_workdir == "" and loaded.init.from_workdir == ""
  flat = run.flatten_config(config)
  for key, value in run.ADDED_KEYS.items():  # the defaults there are base.py's
    assert flat[key] == value, key


# ----------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Finished one-epoch runs another run reads: a float teacher and a stage 1."""
  root = tmp_path_factory.mktemp("runs")
  teacher = _test_config(**{"model.binary": False, "num_epochs": 1.0})
  train.train_and_evaluate(teacher, root / "teacher")
  stage1 = _test_config(**{"model.binary_weights": False, "num_epochs": 1.0})
  train.train_and_evaluate(stage1, root / "stage1")
  return root


@pytest.mark.slow  # trains a teacher and a stage 1 first (the module fixture)
def test_update_distills_from_the_teachers_eval_mode_logits(runs):
  """One jitted update: its "kd" and "loss" equal the formulas on logits computed here."""
  _, spec, teacher_graphdef, teacher_state = run.restore_state(runs / "teacher")
  config = _test_config(**{"distill.weight": 0.6, "optimizer.label_smoothing": 0.1})
  config.optimizer.scale_l2 = 0.0  # the logged loss is then the distillation loss alone
  # A float student: a binary one's logits can differ between this eager forward pass and the
  # jitted one by a flipped bit (a pre-activation within round-off of 0).
  config.model.binary = False
  tx, schedule = optim.make(config, steps_per_epoch=4)
  graphdef, state = run.init_state(config, spec, tx, run.make_mesh())
  teacher = {"params": teacher_state["params"], "rest": teacher_state["rest"]}
  update = jax.jit(
    train.make_update(graphdef, tx, schedule, config, spec, teacher_graphdef), donate_argnums=0
  )
  ds = sources.load_fake(config.data)
  images, labels = jnp.asarray(ds.train_images[:16]), jnp.asarray(ds.train_labels[:16])
  x = normalize(images, spec)
  student = nnx.merge(graphdef, state["params"], jax.tree.map(jnp.copy, state["rest"]))
  s_logits = np.asarray(student(x, train=True))
  t_model = nnx.merge(teacher_graphdef, teacher["params"], teacher["rest"])
  t_logits = np.asarray(t_model(x, train=False))
  # Eval mode matters (train mode normalizes by the batch; on a copy: it updates statistics).
  t_train = nnx.merge(teacher_graphdef, teacher["params"], jax.tree.map(jnp.copy, teacher["rest"]))
  assert not np.allclose(t_logits, np.asarray(t_train(x, train=True)))
  state, metrics = update(state, images, labels, teacher)
  _, metrics_again = update(state, images, labels, teacher)  # the teacher was not donated
  log_p, log_q = _log_softmax(t_logits / 4.0), _log_softmax(s_logits / 4.0)
  kd = 16.0 * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()
  k = s_logits.shape[1]
  targets = 0.9 * np.eye(k)[np.asarray(labels)] + 0.1 / k
  smoothed = -(targets * _log_softmax(s_logits)).sum(-1).mean()
  hard = -_log_softmax(s_logits)[np.arange(16), np.asarray(labels)].mean()
  np.testing.assert_allclose(metrics["kd"], kd, rtol=1e-4)
  np.testing.assert_allclose(metrics["ce"], hard, rtol=1e-4)
  np.testing.assert_allclose(metrics["loss"], 0.4 * smoothed + 0.6 * kd, rtol=1e-4)
  assert np.isfinite(float(metrics_again["kd"]))


@pytest.mark.slow  # a run through train_and_evaluate with a teacher
def test_a_run_distills_from_a_teacher_workdir(runs, tmp_path):
  config = _test_config(**{"distill.teacher_workdir": str(runs / "teacher"), "max_steps": 2})
  config.optimizer.scale_l2 = 0.0
  config.grad_accum_steps = 2  # the teacher also reaches the microbatch loop
  train.train_and_evaluate(config, tmp_path)
  rows = [r for r in run.MetricsLog(tmp_path).read() if "train_mean/kd" in r]
  assert [r["step"] for r in rows] == [2]
  mean = rows[0]
  w = config.distill.weight
  assert mean["train_mean/kd"] > 0
  np.testing.assert_allclose(
    mean["train_mean/loss"],
    (1 - w) * mean["train_mean/ce"] + w * mean["train_mean/kd"],
    rtol=1e-5,
  )


def _copy_run(source, target, **config_changes):
  shutil.copytree(source, target)
  flat = json.loads((target / "config.json").read_text())
  flat.update(config_changes)
  (target / "config.json").write_text(json.dumps(flat))
  return target


def _junk_run(folder):
  folder.mkdir()
  (folder / "config.json").write_text("{")
  return folder


@pytest.mark.parametrize(
  "prepare,message",
  [
    (lambda run, d: d / "absent", "is not a folder; train that run first"),
    (
      lambda run, d: _copy_run(run, d / "other", **{"data.fake_num_classes": 5}),
      r"holds a run on other data \(data.fake_num_classes: 5 there, 4 here\)",
    ),
    (
      lambda run, d: _copy_run(run, d / "cut", num_epochs=6.0),
      r"holds an unfinished run \(step 12 of 24\); finish it first",
    ),
    (lambda run, d: _junk_run(d / "junk"), "is not a readable bnn_jax workdir"),
  ],
  ids=["missing", "other_data", "unfinished", "unreadable"],
)
def test_bad_teacher_folders_fail_in_one_sentence_before_the_run_starts(
  tiny_run, tmp_path, prepare, message
):
  folder = prepare(tiny_run[1], tmp_path)  # a finished run of configs/test.py, copied
  config = _test_config(**{"distill.teacher_workdir": str(folder)})
  with pytest.raises(InputError, match=rf"config.distill.teacher_workdir = '.*' {message}"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["distill.teacher_workdir", "init.from_workdir"])
def test_augmentation_switches_are_no_data_difference_but_the_dataset_is(tiny_run, key):
  """A student with cutout, mixup or cutmix reads a source trained without them; a student on
  another dataset is refused, in one sentence naming the key."""
  source = tiny_run[1]  # a finished run of configs/test.py: no cutout, mixup or cutmix
  spec = run.load_run(source)[1]
  num_train = tiny_run[0].data.fake_train_size
  for switches in ({"cutout": 4, "mixup_alpha": 0.2}, {"cutmix_alpha": 1.0, "augment": "none"}):
    config = _test_config(**{key: str(source)}, **{f"data.{k}": v for k, v in switches.items()})
    restored = warm_start.open_source_run(key, config, spec, num_train)
    assert int(restored[3]["step"]) == 12
  config = _test_config(**{key: str(source), "data.name": "npz", "data.cutout": 4})
  with pytest.raises(
    InputError,
    match=rf"config.{key} = '.*' holds a run on other data \(data.name: 'fake' there, 'npz' here\)",
  ):
    warm_start.open_source_run(key, config, spec, num_train)


@pytest.mark.slow  # two runs through train_and_evaluate
def test_stage_two_starts_from_stage_ones_weights_and_then_resumes_on_its_own(runs, tmp_path):
  stage1 = tmp_path / "stage1"
  shutil.copytree(runs / "stage1", stage1)
  _, _, _, s1 = run.restore_state(stage1)
  s1 = _variables(s1["params"])
  kernels = {f"conv{i}" for i in range(1, 6)}
  # The learning rate of step 0 is 0 (warmup from 0): the checkpoint after the first step
  # holds the parameters stage 2 started from.
  config = _test_config(**{"init.from_workdir": str(stage1), "max_steps": 1})
  config.optimizer.warmup_epochs = 1.0
  train.train_and_evaluate(config, tmp_path / "stage2")
  _, _, _, s2 = run.restore_state(tmp_path / "stage2")
  p2 = _variables(s2["params"])
  assert set(p2) == set(s1) | {f"{k}.alpha" for k in kernels}
  for name, var in s1.items():
    np.testing.assert_array_equal(p2[name][...], var[...], err_msg=name)
  assert all(np.max(np.abs(s1[f"{k}.kernel"][...])) < 1 for k in kernels)  # none clipped
  for k in kernels:
    assert isinstance(p2[f"{k}.kernel"], layers.LatentWeight)
    np.testing.assert_allclose(p2[f"{k}.alpha"][...], _mean_abs(s1[f"{k}.kernel"][...]), 1e-6)
  fresh = run.init_state(config, run.load_run(stage1)[1], optim.make(config, 4)[0], run.make_mesh())
  fresh = _variables(fresh[1]["params"])
  assert not np.allclose(fresh["conv1.alpha"][...], p2["conv1.alpha"][...])  # not the random W's
  counts = [
    int(v) for p, v in jax.tree_util.tree_flatten_with_path(s2["opt_state"])[0] if "count" in str(p)
  ]
  assert counts and set(counts) == {1}  # the optimizer started fresh: one step taken
  # Resuming needs only stage 2's own checkpoint: stage 1 may be gone.
  shutil.rmtree(stage1)
  config.max_steps = 2
  train.train_and_evaluate(config, tmp_path / "stage2")
  assert int(run.restore_state(tmp_path / "stage2")[3]["step"]) == 2


@pytest.mark.slow  # trains a stage 1 and a stage 2
def test_two_stages_in_one_command_equal_the_two_commands_and_resume(runs, tmp_path):
  """init.stage1_epochs: stage 1 in WORKDIR/stage1, then stage 2 from it, bit for bit what the
  two commands (the module's stage 1, then init.from_workdir) give; the same command again
  trains nothing more and leaves stage 1 alone."""
  one = tmp_path / "one"
  config = _test_config(**{"init.stage1_epochs": 1.0, "num_epochs": 1.0})
  train.train_and_evaluate(config, one)
  stage1_config, _ = run.load_run(one / "stage1")
  assert stage1_config.model.binary_weights is False and stage1_config.num_epochs == 1.0
  two = _test_config(**{"init.from_workdir": str(runs / "stage1"), "num_epochs": 1.0})
  train.train_and_evaluate(two, tmp_path / "two")
  for a, b in ((one / "stage1", runs / "stage1"), (one, tmp_path / "two")):
    got, want = run.restore_state(a)[3], run.restore_state(b)[3]
    assert int(got["step"]) == int(want["step"]) == 4
    jax.tree.map(np.testing.assert_array_equal, got["params"], want["params"])
  saved = run.load_run(one)[0]
  assert saved.init.from_workdir == str(one / "stage1") and saved.model.binary_weights is True
  stage1_files = {p: p.stat().st_mtime_ns for p in (one / "stage1").rglob("*")}
  again = train.train_and_evaluate(config, one)
  # Stage 1 is not opened again (a run would rewrite its metrics.jsonl and lock its folder).
  assert {p: p.stat().st_mtime_ns for p in (one / "stage1").rglob("*")} == stage1_files
  evals = [json.loads(r) for r in (one / "metrics.jsonl").read_text().splitlines()]
  assert again["accuracy"] == [r for r in evals if "eval/accuracy" in r][-1]["eval/accuracy"]


@pytest.mark.slow
def test_init_copies_batchnorm_statistics_and_sets_alpha_from_the_loaded_kernels():
  """init_from_run on states, without training: every matching variable, BatchNorm included."""
  spec = DataSpec(4, (8, 8, 3), (0.5,) * 3, (0.25,) * 3)
  mesh = run.make_mesh()
  source_config = _test_config(**{"model.binary_weights": False})
  tx, _ = optim.make(source_config, 4)
  _, source = run.init_state(source_config, spec, tx, mesh)
  rng = np.random.default_rng(0)
  source = jax.tree.map(lambda x: x + rng.uniform(0.1, 0.5, np.shape(x)).astype(x.dtype), source)
  for scale_init in ("mean_abs", "one"):
    config = _test_config(**{"binary.weight_scale_init": scale_init})
    tx, _ = optim.make(config, 4)
    _, target = run.init_state(config, spec, tx, mesh)
    state, copied, fresh = warm_start.init_from_run(target, source, scale_init, mesh)
    got_p, got_r = _variables(state["params"]), _variables(state["rest"])
    for name, var in {**_variables(source["params"]), **_variables(source["rest"])}.items():
      np.testing.assert_array_equal({**got_p, **got_r}[name][...], var[...], err_msg=name)
    assert {".".join(n) for n in fresh} == {f"conv{i}.alpha" for i in range(1, 6)}
    assert len(copied) == len(_variables(source["params"])) + len(_variables(source["rest"]))
    for i in range(1, 6):
      expected = (
        _mean_abs(_variables(source["params"])[f"conv{i}.kernel"][...])
        if scale_init == "mean_abs"
        else np.ones(got_p[f"conv{i}.alpha"][...].shape)
      )
      np.testing.assert_allclose(got_p[f"conv{i}.alpha"][...], expected, rtol=1e-6)
    assert jax.tree.map(jnp.shape, state["opt_state"]) == jax.tree.map(
      jnp.shape, target["opt_state"]
    )


# ----------------------------------------------------------------------------- configs


def _load(name, *args):
  return importlib.import_module(f"configs.{name}").get_config(*args)


@pytest.mark.parametrize(
  "name,args",
  [
    ("vgg_small_sgd", ()),
    ("vgg_small_sgd_fp", ()),
    ("vgg_small_kd", ()),
    ("vgg_small_two_stage", ("1",)),
    ("vgg_small_two_stage", ("2",)),
  ],
)
def test_recipe_configs_pass_the_checks_and_build(name, args):
  config = _load(name, *args)
  config_checks.check_config(config, 1)
  models.create_model(config, 10, (32, 32, 3), nnx.Rngs(0))


def test_sgd_recipe_is_the_anchors_schedule_over_400_epochs():
  config = _load("vgg_small_sgd")
  opt = config.optimizer
  assert (opt.name, opt.momentum, opt.learning_rate, config.batch_size) == ("sgd", 0.9, 0.1, 256)
  assert (opt.weight_decay, opt.latent_weight_decay, config.num_epochs) == (5e-4, 5e-4, 400.0)
  steps_per_epoch = 50_000 // config.batch_size  # 195
  schedule = optim.make_schedule(opt, config.num_epochs, steps_per_epoch)
  total = 400 * steps_per_epoch
  np.testing.assert_allclose(schedule(0), 0.1, rtol=1e-6)
  np.testing.assert_allclose(schedule(total // 2), 0.05, rtol=1e-3)
  np.testing.assert_allclose(schedule(total), 0.0, atol=1e-9)
  opt.warmup_epochs = 5.0  # warmup in epochs works for this length too
  schedule = optim.make_schedule(opt, config.num_epochs, steps_per_epoch)
  warmup = 5 * steps_per_epoch
  np.testing.assert_allclose(schedule(300), 0.1 * 300 / warmup, rtol=1e-5)  # linear from 0
  np.testing.assert_allclose(schedule(warmup), 0.1, rtol=1e-6)
  fp = _load("vgg_small_sgd_fp")
  assert fp.model.binary is False and fp.optimizer.learning_rate == 0.1 and fp.num_epochs == 400


def test_two_stage_configs_differ_only_in_the_stage_switches():
  one, two = (run.flatten_config(_load("vgg_small_two_stage", s)) for s in ("1", "2"))
  differ = {k: (one[k], two[k]) for k in one if one[k] != two[k]}
  assert differ == {
    "model.binary_weights": (False, True),
    "init.from_workdir": ("", "/tmp/vgg_small_two_stage_1"),
  }
  with pytest.raises(ValueError, match="takes the stage after a colon"):
    _load("vgg_small_two_stage")
  kd = _load("vgg_small_kd")
  assert kd.distill.teacher_workdir == "/tmp/vgg_small_fp" and 0 < kd.distill.weight <= 1
