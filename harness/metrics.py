"""Reading one /metrics answer, as the tests and the benchmarks check it."""
from typing import Any, Callable, Dict, Iterable, Tuple

from prometheus_client.parser import text_string_to_metric_families


def sample_map(text: str, parse: Callable[[str], Iterable[Any]] = text_string_to_metric_families
               ) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """{(name, sorted labels): value} of every sample of one /metrics answer."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse(text) for s in family.samples}


def value(samples: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """One sample of sample_map()'s answer, by name and labels."""
    return samples[(name, tuple(sorted(labels.items())))]


def per_server(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """The heartbeat_* per-server samples of one /metrics answer."""
    return {key: v for key, v in sample_map(text).items() if "server_id" in dict(key[1])}


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
