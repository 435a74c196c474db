"""Lineage graphs read from ML Metadata: who produced an artifact, what consumed it.

``Graph`` holds a set of artifacts, executions and the events joining them (as MLMD
stores them), with names resolved (artifact/execution type, pipeline node id, run
id). It is built either by MLMD's own ``get_lineage_subgraph`` (``subgraph``) or by
walking events upstream from one artifact (``upstream``), which lets the model
trace stop at an Evaluator's baseline model instead of following every earlier
model back to the first run.

Everything here only reads the store.
"""
import dataclasses
from typing import Dict, Iterable, List, Optional, Set, Tuple

from ml_metadata.proto import metadata_store_pb2

from core import mlmd

Artifact = metadata_store_pb2.Artifact
Execution = metadata_store_pb2.Execution
Options = metadata_store_pb2.LineageSubgraphQueryOptions

DIRECTIONS = {"upstream": Options.UPSTREAM, "downstream": Options.DOWNSTREAM,
              "both": Options.BIDIRECTIONAL}
MAX_HOPS = 100        # MLMD caps max_num_hops at 100
# Input keys that point at another model's history rather than this one's: the
# trace shows them but does not follow them (TFX Evaluator's baseline).
NOT_FOLLOWED_INPUTS = ("baseline_model",)


@dataclasses.dataclass(frozen=True)
class Edge:
    execution_id: int
    artifact_id: int
    key: str
    is_input: bool


@dataclasses.dataclass
class Graph:
    artifacts: Dict[int, Artifact] = dataclasses.field(default_factory=dict)
    executions: Dict[int, Execution] = dataclasses.field(default_factory=dict)
    edges: List[Edge] = dataclasses.field(default_factory=list)
    artifact_types: Dict[int, str] = dataclasses.field(default_factory=dict)    # type id -> name
    execution_types: Dict[int, str] = dataclasses.field(default_factory=dict)
    node_ids: Dict[int, str] = dataclasses.field(default_factory=dict)          # execution id -> node id
    run_ids: Dict[int, str] = dataclasses.field(default_factory=dict)           # execution id -> run id
    focus: Set[int] = dataclasses.field(default_factory=set)                    # artifact ids asked about
    truncated: Set[int] = dataclasses.field(default_factory=set)                # artifacts not followed
    reused_by: Dict[int, List[int]] = dataclasses.field(default_factory=dict)   # artifact -> cached executions

    # ---------------------------------------------------------------- queries
    def type_of(self, artifact_id: int) -> str:
        artifact = self.artifacts[artifact_id]
        return artifact.type or self.artifact_types.get(artifact.type_id, str(artifact.type_id))

    def execution_type(self, execution_id: int) -> str:
        execution = self.executions[execution_id]
        return execution.type or self.execution_types.get(execution.type_id, str(execution.type_id))

    def execution_name(self, execution_id: int) -> str:
        """The pipeline node id ('Trainer'), else the short execution type name."""
        node = self.node_ids.get(execution_id)
        return node if node and node != "?" else self.execution_type(execution_id).rsplit(".", 1)[-1]

    def producers(self, artifact_id: int) -> List[Edge]:
        return [e for e in self.edges if e.artifact_id == artifact_id and not e.is_input]

    def consumers(self, artifact_id: int) -> List[Edge]:
        return [e for e in self.edges if e.artifact_id == artifact_id and e.is_input]

    def inputs(self, execution_id: int) -> List[Edge]:
        return [e for e in self.edges if e.execution_id == execution_id and e.is_input]

    def outputs(self, execution_id: int) -> List[Edge]:
        return [e for e in self.edges if e.execution_id == execution_id and not e.is_input]

    def merge(self, other: "Graph") -> "Graph":
        self.artifacts.update(other.artifacts)
        self.executions.update(other.executions)
        self.artifact_types.update(other.artifact_types)
        self.execution_types.update(other.execution_types)
        self.node_ids.update(other.node_ids)
        self.run_ids.update(other.run_ids)
        known = set(self.edges)
        self.edges.extend(e for e in other.edges if e not in known)
        self.truncated |= other.truncated
        for aid, eids in other.reused_by.items():
            self.reused_by.setdefault(aid, []).extend(e for e in eids if e not in self.reused_by.get(aid, []))
        self.focus |= other.focus
        return self

    def topological_executions(self) -> List[int]:
        """Execution ids, producers before consumers (ties: oldest first)."""
        needs = {eid: {p.execution_id for e in self.inputs(eid) for p in self.producers(e.artifact_id)}
                 & set(self.executions) - {eid} for eid in self.executions}
        order: List[int] = []
        pending = sorted(self.executions, key=lambda i: (self.executions[i].create_time_since_epoch, i))
        while pending:
            ready = [eid for eid in pending if needs[eid] <= set(order)] or pending[:1]
            order.append(ready[0])
            pending.remove(ready[0])
        return order


# -------------------------------------------------------------------- helpers
def _fill_in_names(store, graph: Graph) -> Graph:
    """Fill in type names, node ids and run ids."""
    a_types = {a.type_id for a in graph.artifacts.values() if a.type_id not in graph.artifact_types}
    if a_types:
        graph.artifact_types.update({t.id: t.name for t in store.get_artifact_types_by_id(list(a_types))})
    e_types = {e.type_id for e in graph.executions.values() if e.type_id not in graph.execution_types}
    if e_types:
        graph.execution_types.update({t.id: t.name for t in store.get_execution_types_by_id(list(e_types))})
    for eid in graph.executions:
        if eid not in graph.node_ids:
            graph.node_ids[eid], graph.run_ids[eid] = mlmd.node_and_run(store, eid)
    return graph


def _edges(events: Iterable[metadata_store_pb2.Event]) -> List[Edge]:
    edges = []
    for event in events:
        if event.type in mlmd.INPUT_EVENTS:
            edges.append(Edge(event.execution_id, event.artifact_id, mlmd.event_key(event), True))
        elif event.type in mlmd.OUTPUT_EVENTS:
            edges.append(Edge(event.execution_id, event.artifact_id, mlmd.event_key(event), False))
    return edges


def artifact_or_error(store, artifact_id: int) -> Artifact:
    found = store.get_artifacts_by_id([artifact_id])
    if found:
        return found[0]
    from ml_metadata.metadata_store import ListOptions, OrderByField

    recent = store.get_artifacts(list_options=ListOptions(limit=30, order_by=OrderByField.ID, is_asc=False))
    types = {t.id: t.name for t in store.get_artifact_types()}
    listing = ", ".join(f"{a.id} {types.get(a.type_id, '?')}" for a in recent)
    raise mlmd.MetadataError(
        f"no artifact with id {artifact_id}. " +
        (f"Artifacts (newest first): {listing}" if recent else "The store has no artifacts."))


# ------------------------------------------------------------------ builders
def subgraph(store, artifact_id: int, direction: str = "both", hops: int = 4) -> Graph:
    """MLMD's lineage subgraph around one artifact (``get_lineage_subgraph``)."""
    artifact_or_error(store, artifact_id)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
    hops = max(1, min(int(hops), MAX_HOPS))
    options = Options(max_num_hops=hops, direction=DIRECTIONS[direction])
    options.starting_artifacts.filter_query = f"id = {int(artifact_id)}"
    result = store.get_lineage_subgraph(options)
    edges = _edges(result.events)
    # Resolvers touch artifacts only through INTERNAL_* events (they select, not
    # make or read): not lineage, so executions without real edges are left out.
    linked = {e.execution_id for e in edges}
    graph = Graph(artifacts={a.id: a for a in result.artifacts},
                  executions={e.id: e for e in result.executions if e.id in linked},
                  edges=edges,
                  artifact_types={t.id: t.name for t in result.artifact_types},
                  execution_types={t.id: t.name for t in result.execution_types},
                  focus={artifact_id})
    # Nodes at the edge of the hop limit may have more lineage: mark artifacts
    # whose producer/consumers were not included.
    return _fill_in_names(store, graph)


def upstream(store, artifact_id: int, not_followed: Tuple[str, ...] = NOT_FOLLOWED_INPUTS) -> Graph:
    """Everything ``artifact_id`` was made from, walking OUTPUT/INPUT events back
    to artifacts nobody in the store produced (imported files, ExampleGen inputs).
    Inputs under a key in ``not_followed`` are included but not traced further.

    A cached execution records the artifacts it reused as its outputs; the trace
    follows the execution that actually made each artifact and lists the cached
    ones in ``Graph.reused_by``."""
    graph = Graph(focus={artifact_id})
    graph.artifacts[artifact_id] = artifact_or_error(store, artifact_id)
    frontier = [artifact_id]
    while frontier:
        makers = _makers(store, graph, frontier)
        if not makers:
            break
        graph.executions.update(makers)
        frontier = _add_inputs_of(store, graph, list(makers), not_followed)
    _fill_in_names(store, graph)
    for eid in {eid for ids in graph.reused_by.values() for eid in ids}:
        run_id = mlmd.run_of_execution(store, eid)
        if run_id:
            graph.run_ids[eid] = run_id
    return graph


def _makers(store, graph: Graph, artifact_ids: List[int]) -> Dict[int, Execution]:
    """The executions (not yet in ``graph``) that made ``artifact_ids``: those that
    ran; the cached ones that reused an artifact go to ``graph.reused_by``."""
    events = [e for e in store.get_events_by_artifact_ids(artifact_ids) if e.type in mlmd.OUTPUT_EVENTS]
    candidates = {e.id: e for e in store.get_executions_by_id(
        list({e.execution_id for e in events} - set(graph.executions)))}
    makers: Dict[int, Execution] = {}
    for aid in artifact_ids:
        made = [candidates[e.execution_id] for e in events
                if e.artifact_id == aid and e.execution_id in candidates]
        ran = [x for x in made if x.last_known_state != mlmd.STATE.CACHED] or made[:1]
        makers.update({x.id: x for x in ran})
        for cached in made:
            if cached.id not in makers:
                graph.reused_by.setdefault(aid, []).append(cached.id)
    return makers


def _add_inputs_of(store, graph: Graph, execution_ids: List[int], not_followed: Tuple[str, ...]) -> List[int]:
    """Add the executions' events and the artifacts they name to ``graph``; returns
    the new input artifacts to trace further (those under ``not_followed`` keys are
    marked truncated instead)."""
    edges = _edges(store.get_events_by_execution_ids(execution_ids))
    graph.edges.extend(e for e in edges if e not in graph.edges)
    new_ids = {e.artifact_id for e in edges} - set(graph.artifacts)
    for artifact in store.get_artifacts_by_id(list(new_ids)):
        graph.artifacts[artifact.id] = artifact
    frontier: List[int] = []
    for edge in edges:
        if not edge.is_input or edge.artifact_id not in new_ids:
            continue
        if edge.key in not_followed:
            graph.truncated.add(edge.artifact_id)
        elif edge.artifact_id not in frontier:
            frontier.append(edge.artifact_id)
    return frontier


def consumers_of(store, artifact_ids: Iterable[int], exclude: Iterable[int] = ()) -> Graph:
    """Executions that took any of ``artifact_ids`` as input (and what they wrote):
    later Evaluators using a model as baseline, Resolvers, monitoring runs..."""
    artifact_ids = list(artifact_ids)
    exclude = set(exclude)
    events = store.get_events_by_artifact_ids(artifact_ids)
    execution_ids = sorted({e.execution_id for e in events if e.type in mlmd.INPUT_EVENTS} - exclude)
    graph = Graph()
    if not execution_ids:
        return graph
    graph.executions = {e.id: e for e in store.get_executions_by_id(execution_ids)}
    graph.edges = [e for e in _edges(store.get_events_by_execution_ids(execution_ids))
                   if not e.is_input or e.artifact_id in artifact_ids]
    graph.artifacts = {a.id: a for a in store.get_artifacts_by_id(
        list({e.artifact_id for e in graph.edges}))}
    return _fill_in_names(store, graph)


def same_run_checks(store, graph: Graph, artifact_id: int, run_id: Optional[str],
                    rounds: int = 3, exclude: Iterable[int] = (),
                    output_types: Optional[Set[str]] = None) -> Graph:
    """Executions of ``run_id`` downstream of ``artifact_id`` that are not in
    ``graph`` (e.g. StatisticsGen, ExampleValidator and the data gate checking the
    Examples a model was trained on), up to ``rounds`` steps away. With
    ``output_types``, only executions whose outputs are all of those types count
    (so a check does not wander into other runs' training)."""
    found = Graph()
    if not run_id:
        return found
    frontier = {artifact_id}
    for _ in range(rounds):
        step = consumers_of(store, frontier, exclude=set(graph.executions) | set(found.executions)
                            | set(exclude))
        keep = [eid for eid in step.executions if step.run_ids.get(eid) == run_id
                and (output_types is None
                     or all(step.type_of(e.artifact_id) in output_types for e in step.outputs(eid)))]
        if not keep:
            break
        sub = Graph(executions={i: step.executions[i] for i in keep},
                    edges=[e for e in step.edges if e.execution_id in keep],
                    artifact_types=step.artifact_types, execution_types=step.execution_types,
                    node_ids=step.node_ids, run_ids=step.run_ids)
        sub.artifacts = {e.artifact_id: step.artifacts[e.artifact_id] for e in sub.edges}
        found.merge(sub)
        frontier = {e.artifact_id for e in sub.edges if not e.is_input}
        if not frontier:
            break
    return found
