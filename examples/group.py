"""An agent group: a planner fans out to analysts, a conditional edge escalates.

    python examples/group.py [--backend trio]

planner --(one task per question: FanOut)--> analyst --> summariser  (always)
                                                     --> escalation  (only when a finding is risky)
"""

from __future__ import annotations

import sys

import anyio
from pydantic import BaseModel

from murmur import AgentGroup, AgentRuntime, Edge, FanOut, TaskSpec


class Plan(BaseModel):
    topic: str
    questions: FanOut[list[str]]


class Finding(BaseModel):
    question: str
    risky: bool


async def planner(topic: str) -> Plan:
    return Plan(topic=topic, questions=[f"{topic}: {part}" for part in ("cost", "risk", "legal")])


async def analyst(question: str) -> Finding:
    if "legal" in question and "mars" in question:
        raise LookupError("no lawyer on Mars")  # one failed slot: reported, not fatal
    return Finding(question=question, risky="risk" in question and "bridge" in question)


async def summariser(findings: list[Finding]) -> str:
    return f"{len(findings)} findings: " + "; ".join(f.question for f in findings)


async def escalation(findings: list[Finding]) -> str:
    return "escalated: " + ", ".join(f.question for f in findings if f.risky)


def any_risky(findings: list[Finding]) -> bool:
    return any(f.risky for f in findings)


review = AgentGroup(
    name="review",
    topology={
        planner: Edge(to=(analyst,), max_concurrency=3),
        analyst: (Edge(to=(summariser,)), Edge(to=(escalation,), when=any_risky)),
        summariser: Edge.terminal(),
        escalation: Edge.terminal(),
    },
)


async def main() -> None:
    async with AgentRuntime() as runtime:
        for topic in ("bridge", "mars base"):
            result = await runtime.run_group(review, TaskSpec(input=topic))
            print(f"[{topic}] ok={result.is_ok()}")
            for terminal, output in result.outputs.items():
                print(f"  {terminal}: {output}")
            print("  status:", dict(result.status))
            print("  failed slots:", dict(result.failed_slots))


if __name__ == "__main__":
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "asyncio"
    anyio.run(main, backend=backend)
