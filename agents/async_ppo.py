"""PPO whose episodes do not wait for each other: as many evaluations in flight as there are evaluation workers.

RLlib's env runners step their envs in lockstep, and an episode's last step is an evaluation of minutes: each runner
waits on one evaluation, an iteration waits on its slowest one, and a cluster with more workers than runners leaves
the rest idle. Here the algorithm samples episodes itself: an episode's observations depend only on its own earlier
actions (the teacher and the budget are known), so the policy decides a whole sub-network at once, hands its
evaluation to a thread, and decides the next one while it runs. ``in_flight`` evaluations run at a time (default: one
per evaluation worker, plus M queued); whenever one comes back its episode is complete, and every ``M`` complete
episodes PPO updates the policy (RLlib's learner, loss and GAE unchanged; more than M when the policy lag would
otherwise exceed ``policy_lag`` updates). An episode may have been decided by a policy a few updates old: it carries
the log-probabilities it was sampled with, and PPO's clipped ratio is taken against them (the policy lag is
reported as ``rcnas/policy_lag``). The sampler's state is part of the algorithm's checkpoint (its random state,
the episodes whose evaluations were running or waiting to be used, the env's task draws and repeat masks): a resumed
search asks again for the evaluations that were running when it was killed (the store answers those that finished
meanwhile) and decides on from where it was, so that ``ordered`` reproduces a search across a resume too. A
screening surrogate's state is not part of it: a resumed screened search's surrogate learns again from the store (an
episode promoted before the checkpoint stays promoted).

With more than one evaluation in flight, which policy decides which sub-network depends on which evaluation comes
back first, unless the episodes are taken in the order they were decided (``ordered``): reproducible from the seed,
at the price of workers idle behind a slow evaluation.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from ray.rllib.algorithms.ppo import PPO
from ray.rllib.callbacks.utils import make_callback
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_context import EnvContext
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    EPISODE_LEN_MEAN,
    EPISODE_RETURN_MAX,
    EPISODE_RETURN_MEAN,
    EPISODE_RETURN_MIN,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_EPISODES,
    NUM_EPISODES_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from envs.compression_env import CompressionEnv, Finish

SAMPLER_KEY = "sampler"
"""``env_config`` key of the sampler's settings (``in_flight``, ``episodes``): the env ignores it, and it travels
with the config through Tune and checkpoints"""
SAMPLER_STATE = "rcnas_sampler"
"""the algorithm state's key (and checkpoint component name) of the sampler's state"""
WINDOW = 100
"""episodes averaged in the per-episode means, as RLlib's env runners do"""


@dataclass
class _Open:
    """An episode whose last step waits for its evaluation."""

    episode: SingleAgentEpisode
    finish: Finish
    last_obs: dict[str, np.ndarray]
    action: int
    outputs: dict[str, Any]
    version: int
    index: int
    """the order it was decided in"""
    promoted: bool = False
    """screened in this thread and promoted: its proxy result is learnt from when it is completed"""


@dataclass
class Sampled:
    """A complete episode and how many policy updates old the policy that decided it was when it came back."""

    episode: SingleAgentEpisode
    lag: int


def _in_thread(work: Callable[[], Any]) -> Future:
    """``work()`` in a daemon thread: an evaluation still running when the process ends (Ctrl-C, a trial stopped)
    must not keep it alive (a pool's threads would be joined at exit, minutes for a long evaluation)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            future.set_exception(exc)

    threading.Thread(target=run, name="rcnas-evaluation", daemon=True).start()
    return future


class EpisodeSampler:
    """Keeps ``in_flight`` evaluations running and returns complete episodes as they come back.

    Episodes come back as their evaluations finish; ``ordered`` returns them in the order they were decided
    instead, so that which policy decides which episode never depends on timing: a search reproducible from its
    seed at any ``in_flight``, at the price of workers that finish first waiting for an older evaluation to come back
    before new work starts. ``in_flight`` 1 evaluates in this thread, one episode after the other. No Ray here: the
    env's evaluator does the work.
    """

    def __init__(self, env: CompressionEnv, in_flight: int, seed: int, ordered: bool = False,
                 refresh: bool = False) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        self.env, self.in_flight, self.ordered, self.refresh = env, in_flight, ordered, refresh
        self.version = 0
        """policy updates so far (the algorithm bumps it after each)"""
        self._seed = seed
        self._gen = torch.Generator().manual_seed(seed)
        self._pending: dict[Future, _Open] = {}
        self._started = 0
        self._done: deque[Sampled] = deque()

    @property
    def running(self) -> int:
        return len(self._pending)

    def state(self) -> dict[str, Any]:
        """Everything the episodes to come depend on besides the policy, as plain data (it goes into the algorithm's
        checkpoint): the random state, the episodes still waiting for their evaluations or to be used, the env's."""
        return {
            "seed": self._seed, "generator": self._gen.get_state().numpy(), "started": self._started,
            "version": self.version, "env": self.env.sampling_state(),
            "pending": [{"episode": o.episode.get_state(), "task_index": o.finish.index,
                         "actions": list(o.finish.actions), "info": dict(o.finish.info), "last_obs": o.last_obs,
                         "action": o.action, "outputs": o.outputs, "version": o.version, "index": o.index,
                         "promoted": o.promoted,
                         # a screened-out episode's answer is here already: kept, not screened again
                         "answer": f.result() if not o.promoted and f.done() and f.exception() is None else None}
                        for f, o in sorted(self._pending.items(), key=lambda fo: fo[1].index)],
            "done": [{"episode": s.episode.get_state(), "lag": s.lag} for s in self._done],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (a fresh sampler of the same env and seed): the evaluations that were running
        are asked for again, in the order they were decided."""
        if self._started or self._pending or self._done:
            raise RuntimeError("restore() into a sampler that has already sampled")
        if state["seed"] != self._seed:
            raise ValueError(f"a sampler state of seed {state['seed']} restored into one of seed {self._seed}")
        self._gen.set_state(torch.as_tensor(np.asarray(state["generator"], dtype=np.uint8)))
        self._started, self.version = int(state["started"]), int(state["version"])
        self.env.restore_sampling_state(state["env"])
        self._done.extend(Sampled(SingleAgentEpisode.from_state(d["episode"]), int(d["lag"])) for d in state["done"])
        for p in state["pending"]:
            index, actions = int(p["task_index"]), tuple(int(a) for a in p["actions"])
            finish = Finish(index, self.env.tasks[index], actions, self.env.spaces[index].arch(actions), p["info"])
            opened = _Open(SingleAgentEpisode.from_state(p["episode"]), finish, p["last_obs"], int(p["action"]),
                           p["outputs"], int(p["version"]), int(p["index"]), bool(p.get("promoted")))
            if p.get("answer") is not None:
                answered: Future = Future()
                answered.set_result(p["answer"])
                self._pending[answered] = opened
            else:
                self._submit(opened)

    def collect(self, module: Any, n: int, needed: Optional[int] = None) -> list[Sampled]:
        """``n`` complete episodes: the oldest that came back, sampling new ones from ``module`` (RLlib's RLModule:
        ``forward_exploration`` gives the masked logits) to keep ``in_flight`` evaluations running meanwhile, but
        never more running or kept than the ``needed`` episodes still to be used (these ``n`` included; None: no
        end in sight): the last updates of a stage start no evaluation nobody would read."""
        if needed is not None and needed < n:
            raise ValueError(f"{n} episodes asked for when only {needed} are still needed")
        while len(self._done) < n:
            while len(self._pending) < self.in_flight and (
                    needed is None or len(self._pending) + len(self._done) < needed):
                self._start(module)
            if self.ordered:  # the oldest first, whoever finishes first: new episodes start at the same points
                oldest = min(self._pending, key=self._decided)
                wait([oldest])
                self._complete(oldest)
                continue
            done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=self._decided):  # the same order when several come back
                self._complete(future)
        out = [self._done.popleft() for _ in range(n)]
        if self.refresh:
            for s in out:
                if s.lag:
                    _refresh(s.episode, module)
        return out

    def _act(self, module: Any, obs: dict[str, np.ndarray]) -> tuple[int, dict[str, Any]]:
        batch = {Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in obs.items()}}
        with torch.no_grad():
            logits = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS][0].float()
        logp_all = torch.log_softmax(logits, dim=-1)
        action = int(torch.multinomial(logp_all.exp(), 1, generator=self._gen))
        return action, {Columns.ACTION_LOGP: np.float32(logp_all[action]),
                        Columns.ACTION_DIST_INPUTS: logits.numpy().astype(np.float32)}

    def _start(self, module: Any) -> None:
        env = self.env
        obs, info = env.reset(seed=self._seed if self._started == 0 else None)
        episode = SingleAgentEpisode(observation_space=env.observation_space, action_space=env.action_space)
        episode.add_env_reset(observation=obs, infos=info)
        while True:
            action, outputs = self._act(module, obs)
            nxt, info, finish = env.step_deferred(action)
            if finish is not None:
                break
            episode.add_env_step(nxt, action, 0.0, infos=info, extra_model_outputs=outputs)
            obs = nxt
        self._submit(_Open(episode, finish, nxt, action, outputs, self.version, self._started))
        self._started += 1

    def _submit(self, opened: _Open) -> None:
        """Start ``opened``'s evaluation (in this thread when one at a time). A screening evaluator that screens in
        this process (a surrogate) screens here, in the order decided, and learns from a promoted proposal's result
        when its episode is completed: which proposals are promoted never depends on which evaluation finished
        first, so that ``ordered`` reproduces a screened search too."""
        ev, finish = self.env.evaluator, opened.finish
        evaluate = ev.evaluate
        if getattr(ev, "screens_in_process", False):
            if not opened.promoted:  # (a restored episode was promoted before the checkpoint)
                early = ev.screen(finish.task, finish.arch)
                if early is not None:  # screened out (or a repeat): its answer is already here
                    future: Future = Future()
                    future.set_result(early)
                    self._pending[future] = opened
                    return
                opened.promoted = True
            evaluate = ev.inner.evaluate
        if self.in_flight == 1:
            future = Future()
            try:
                future.set_result(evaluate(finish.task, finish.arch))
            except Exception as exc:  # noqa: BLE001 - raised by _complete, like the threaded path
                future.set_exception(exc)
        else:
            future = _in_thread(lambda: evaluate(finish.task, finish.arch))
        self._pending[future] = opened

    def _decided(self, future: Future) -> int:
        return self._pending[future].index

    def _complete(self, future: Future) -> None:
        opened = self._pending.pop(future)
        result = future.result()
        if opened.promoted and getattr(self.env.evaluator, "screens_in_process", False):
            self.env.evaluator.learn(opened.finish.task, opened.finish.arch, result)
        reward, terminated, truncated, info = self.env.outcome(opened.finish, result)
        opened.episode.add_env_step(opened.last_obs, opened.action, reward, infos=info, terminated=terminated,
                                    truncated=truncated, extra_model_outputs=opened.outputs)
        self._done.append(Sampled(opened.episode.to_numpy(), self.version - opened.version))


def _refresh(episode: SingleAgentEpisode, module: Any) -> None:
    """An episode decided by an older policy, its log-probabilities and logits taken again from ``module`` (the
    policy about to be updated): PPO's ratio then starts at 1 for it instead of being clipped away."""
    obs = episode.get_observations(slice(0, len(episode)))
    with torch.no_grad():
        logits = module.forward_exploration({Columns.OBS: {k: torch.as_tensor(v) for k, v in obs.items()}})[
            Columns.ACTION_DIST_INPUTS].float()
    actions = torch.as_tensor(np.asarray(episode.get_actions(slice(0, len(episode)))), dtype=torch.long)
    logp = torch.log_softmax(logits, dim=-1).gather(1, actions[:, None])[:, 0]
    episode.set_extra_model_outputs(key=Columns.ACTION_LOGP, new_data=logp.numpy().astype(np.float32))
    episode.set_extra_model_outputs(key=Columns.ACTION_DIST_INPUTS, new_data=logits.numpy().astype(np.float32))


class AsyncSearchPPO(PPO):
    """RLlib's PPO with :class:`EpisodeSampler` in place of env runners (built with ``num_env_runners=0``: the
    algorithm's own local runner holds the policy that samples)."""

    _sampler: Optional[EpisodeSampler] = None
    _sampler_from_checkpoint: Optional[dict[str, Any]] = None
    """a checkpoint's sampler state, applied when the sampler is built (at the first step after the restore)"""

    def get_state(self, components: Any = None, *, not_components: Any = None, **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self._check_component(SAMPLER_STATE, components, not_components):
            sampler_state = self._sampler.state() if self._sampler is not None else self._sampler_from_checkpoint
            if sampler_state is not None:
                state[SAMPLER_STATE] = sampler_state
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if SAMPLER_STATE in state:
            self._sampler, self._sampler_from_checkpoint = None, state[SAMPLER_STATE]

    def screening_counts(self) -> Optional[dict[str, int]]:
        """Proposals promoted to the proxy and screened out so far by this search's screening (None without one)."""
        ev = self._sampler.env.evaluator if self._sampler is not None else None
        if ev is None or not hasattr(ev, "screened_out"):
            return None
        return {"promoted": int(ev.promoted), "screened_out": int(ev.screened_out)}

    def _episode_sampler(self) -> EpisodeSampler:
        if self._sampler is None:
            cfg = self.config.env_config
            settings = dict(cfg.get(SAMPLER_KEY) or {})
            env = self.env_creator(EnvContext(cfg, worker_index=0, num_workers=0))
            # one per worker, and M more queued at the service: a worker that finishes while the policy updates
            # finds the next sub-network waiting (measured: 85% -> 93% of 8 simulated workers busy, regret per
            # evaluation within noise of one per worker; BENCHMARKS.md)
            workers = parallelism(env.evaluator)
            in_flight = settings.get("in_flight") or (workers + int(settings.get("episodes") or 0) if workers else 1)
            self._sampler = EpisodeSampler(env, int(in_flight), seed=int(self.config.seed or 0),
                                           ordered=bool(settings.get("ordered")),
                                           refresh=settings.get("lagged") == "refresh")
            if self._sampler_from_checkpoint is not None:
                self._sampler.restore(self._sampler_from_checkpoint)
                self._sampler_from_checkpoint = None
        return self._sampler

    def training_step(self) -> None:
        settings = self.config.env_config.get(SAMPLER_KEY) or {}
        sampler = self._episode_sampler()
        per_update = episodes_per_update(int(settings.get("episodes") or 1), sampler.in_flight,
                                         settings.get("policy_lag"))
        # a stage of known length (agents.stages.stage_length): the episodes its remaining updates will use
        iterations = settings.get("iterations")
        needed = max(per_update, (int(iterations) - self.iteration) * per_update) if iterations else None
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            sampled = sampler.collect(self.env_runner.module, per_update, needed)
        self._log_episodes(sampled, sampler)
        episodes = [s.episode for s in sampled]
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)),
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME), default=0),
                },
                num_epochs=self.config.num_epochs,
                minibatch_size=self.config.minibatch_size,
                shuffle_batch_per_epoch=self.config.shuffle_batch_per_epoch,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            # the local runner's module samples the next episodes: it gets the weights just learned
            self.env_runner_group.sync_weights(from_worker_or_learner_group=self.learner_group,
                                               inference_only=True)
        sampler.version += 1

    def _log_episodes(self, sampled: list[Sampled], sampler: EpisodeSampler) -> None:
        """The per-episode metrics RLlib's env runners would report (and the callbacks' ``on_episode_end``), logged
        as a runner logs them and merged the way the algorithm merges its runners' (``env_runners/...``)."""
        runner = MetricsLogger()
        for s in sampled:
            ret, length = float(s.episode.get_return()), len(s.episode)
            runner.log_value(EPISODE_RETURN_MEAN, ret, window=WINDOW)
            runner.log_value(EPISODE_RETURN_MAX, ret, reduce="max", window=WINDOW)
            runner.log_value(EPISODE_RETURN_MIN, ret, reduce="min", window=WINDOW)
            runner.log_value(EPISODE_LEN_MEAN, length, window=WINDOW)
            runner.log_value(NUM_ENV_STEPS_SAMPLED, length, reduce="sum")
            runner.log_value(NUM_ENV_STEPS_SAMPLED_LIFETIME, length, reduce="lifetime_sum")
            runner.log_value(NUM_EPISODES, 1, reduce="sum")
            runner.log_value(NUM_EPISODES_LIFETIME, 1, reduce="lifetime_sum")
            runner.log_value("rcnas/policy_lag", s.lag, window=WINDOW)
            make_callback("on_episode_end", callbacks_objects=self.callbacks,
                          callbacks_functions=self.config.callbacks_on_episode_end,
                          kwargs=dict(episode=s.episode, env_runner=None, metrics_logger=runner, env=sampler.env,
                                      env_index=0, rl_module=self.env_runner.module))
        runner.log_value("rcnas/in_flight", sampler.running, window=1)
        self.metrics.aggregate([runner.reduce()], key=ENV_RUNNER_RESULTS)


def episodes_per_update(m: int, in_flight: int, policy_lag: Optional[int]) -> int:
    """M, or more when ``in_flight`` evaluations would otherwise be decided by a policy more than ``policy_lag``
    updates old (an episode decided now comes back after about in_flight / batch updates)."""
    if not policy_lag:
        return m
    return max(m, -(-in_flight // policy_lag))


def parallelism(evaluator: Any) -> int:
    """How many evaluations the evaluator runs side by side: the service's workers; 0 for one that says nothing
    (an evaluator in this process, a table: one at a time, in this thread)."""
    stats = getattr(evaluator, "stats", None)
    if stats is None:
        return 0
    return max(1, int(stats().get("workers", 1)))
