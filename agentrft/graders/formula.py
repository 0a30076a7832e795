"""A safe arithmetic formula over names, for the multi grader's ``calculate_output``.

``0.8 * answer + 0.2 * tools``, ``min(answer, judge)``, ``(a + b) / 2``: numbers, names,
``+ - * /``, unary minus, parentheses, and the functions ``min``, ``max`` and ``abs``. It is parsed
with ``ast`` and walked over a whitelist — never ``eval`` — so a grader file cannot run code.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping

from ..errors import UserError

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., float]] = {"min": min, "max": max, "abs": abs}


class Formula:
    """A parsed formula; ``names`` are the variables it reads."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise UserError(f"calculate_output: cannot parse {text!r} ({exc.msg})") from None
        self._tree = tree.body
        self.names: set[str] = set()
        self._check(self._tree)

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise UserError(f"calculate_output: only numbers are allowed, got {node.value!r}")
        elif isinstance(node, ast.Name):
            self.names.add(node.id)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            self._check(node.operand)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and node.args
            and not node.keywords
        ):
            for arg in node.args:
                self._check(arg)
        else:
            shown = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
            raise UserError(
                f"calculate_output: {shown!r} is not allowed (use numbers, grader names, + - * /, "
                "parentheses, min, max, abs)"
            )

    def __call__(self, values: Mapping[str, float]) -> float:
        """Evaluate with ``values`` for the names; ZeroDivisionError propagates."""
        return self._eval(self._tree, values)

    def _eval(self, node: ast.AST, values: Mapping[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(values[node.id])
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, values), self._eval(node.right, values))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, values))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return float(_FUNCTIONS[node.func.id](*(self._eval(arg, values) for arg in node.args)))


__all__ = ["Formula"]
