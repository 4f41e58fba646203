"""Embedding the message system in a Trio program that does other things: here, a TCP server.

The message system is one more async context manager in the program, not a framework that
owns the event loop. The program serves TCP on a free local port with ``trio.serve_tcp``; each
connection's handler asks an agent (``call``) and writes the answer back. A client in the same
program asks three questions, then the program shuts its server down (cancels its nursery) and
leaves the ``open_message_system`` block, which stops every agent.
"""

import functools

import trio

from terraphim_actors import Agent, open_message_system


class Assistant(Agent):
    async def on_start(self) -> None:
        self.answered = 0

    async def handle_call(self, question, ctx):
        self.answered += 1
        return f"answer #{self.answered}: {question.upper()}"

    async def on_stop(self, reason) -> None:
        print(f"the assistant stops ({reason.value}) after {self.answered} answers")


async def serve_one_question(stream, assistant) -> None:
    """A connection carries one question (the client then closes its side) and its answer."""
    async with stream:
        question = b""
        async for chunk in stream:
            question += chunk
        answer = await assistant.call(question.decode())
        await stream.send_all(answer.encode())


async def ask(port, question) -> str:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(question.encode())
        await stream.send_eof()
        answer = b""
        async for chunk in stream:
            answer += chunk
        return answer.decode()


async def main() -> None:
    async with open_message_system() as system:
        assistant = await system.spawn(Assistant, name="assistant")
        async with trio.open_nursery() as server:
            handler = functools.partial(serve_one_question, assistant=assistant)
            listeners = await server.start(
                functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            print("the server listens on a free port of 127.0.0.1")
            for question in ("what is an actor?", "why trio?", "what is a mailbox?"):
                print(f"client: {question!r} -> {await ask(port, question)!r}")
            server.cancel_scope.cancel()  # the program shuts its server down
        print(f"the server has stopped; agents still running: {len(system.agents)}")
    print("the message system has shut down")


if __name__ == "__main__":
    trio.run(main)
