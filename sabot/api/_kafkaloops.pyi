from typing import Any, Callable, List, Optional, Set, Tuple

def take_messages(got: List[Any], msgs: List[Any], at_eof: Set[Tuple[str, int]],
                  eof_code: int) -> List[Any]: ...

def produce_all(produce: Callable[..., Any], poll: Callable[[float], Any], topic: str,
                values: List[bytes], keys: List[Optional[bytes]],
                kafka_exception: type) -> List[Tuple[int, BaseException]]: ...
