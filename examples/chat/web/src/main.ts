// The chat page: one Parley connection carrying the generated
// ChatServiceClient's calls, the ChatEvents the server pushes (subscribed
// with ChatEventsSubscriber), the server's ConfirmLeave calls (answered by
// a handler registered with registerChatEventsHandler) and a bidirectional
// TypingStream: the page sends whether its user is typing and receives who
// is typing in the room.
//
// The connection reconnects by itself when the socket drops (the server
// restarting, a network change): the header shows it reconnecting, then
// whether the server resumed the session (rooms and missed events kept)
// or started a new one, in which case the page re-joins its room and
// reloads the history. The TypingStream, which no reconnect keeps, is
// opened again either way.
//
// `make generate` bundles it with esbuild into ../static/app.js, which the
// Go server embeds. ?user=NAME&room=ROOM signs in at once; &protocol=json
// speaks parley.v1+json, which is why the page imports
// @parleyrpc/runtime/json (a page without that switch leaves it out, and
// with it protobuf-es's JSON code).
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Connection, ParleyError, binaryProtocol, type BidiStreamCall } from "@parleyrpc/runtime";
import { jsonProtocol } from "@parleyrpc/runtime/json";
import type { ChatMessage, TypingStreamRequestSchema, TypingStreamResponseSchema } from "../../gen/ts/chat/v1/chat_pb";
import { ChatEventsSubscriber, ChatServiceClient, registerChatEventsHandler } from "../../gen/ts/chat/v1/chat_parley";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing`);
  return el as T;
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]> = {}, ...children: (Node | string)[]) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

const params = new URLSearchParams(location.search);
const parleyURL = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/parley`;

/** Typing is re-sent this often while the user types: the server forgets it after 5 s. */
const typingRefreshMs = 3000;

class ChatPage {
  readonly conn: Connection;
  readonly chat: ChatServiceClient;
  readonly user: string;
  readonly room: string;
  readonly members = new Map<string, boolean>(); // user → online
  readonly seen = new Set<bigint>(); // message ids shown
  typing?: BidiStreamCall<typeof TypingStreamRequestSchema, typeof TypingStreamResponseSchema>;
  typingSentAt = 0; // when typing = true last went out; 0 when not typing
  joined = false; // in the room: false until Join, and after leaving it

  constructor(user: string, room: string) {
    this.user = user;
    this.room = room;
    // The development token "dev-<name>" travels in Hello's metadata as
    // "authorization: Bearer dev-<name>": browsers cannot set headers on
    // a WebSocket.
    this.conn = new Connection(parleyURL, {
      token: `dev-${user}`,
      protocol: params.get("protocol") === "json" ? jsonProtocol : binaryProtocol,
    });
    this.chat = new ChatServiceClient(this.conn);
    this.conn.onStateChange((s) => {
      this.showStatus();
      if (s.status == "open" && s.reconnected) void this.reconnected(s.resumed);
    });
    this.showStatus();
    this.subscribe();
  }

  showStatus(): void {
    const s = this.conn.state;
    const status = $("status");
    status.dataset.status = s.status;
    delete status.dataset.resumed;
    if (s.status == "open" && s.reconnected) status.dataset.resumed = String(s.resumed);
    status.title = s.status == "reconnecting" || s.status == "closed" ? s.error.message : "";
    status.textContent =
      s.status == "closed" ? `disconnected: ${s.error.message}`
      : s.status == "reconnecting" ? `reconnecting (attempt ${s.attempt}${s.delayMs ? `, in ${(s.delayMs / 1000).toFixed(1)} s` : ""})…`
      : s.status == "open" && s.reconnected ? (s.resumed ? "reconnected" : "reconnected (new session)")
      : s.status;
  }

  /**
   * After a reconnect: a resumed session kept the room and replayed the
   * events missed; a new one has forgotten both, so the page joins again
   * and reloads the room's history. The typing stream ended with the old
   * socket and is opened again.
   */
  async reconnected(resumed: boolean): Promise<void> {
    if (!this.joined) return;
    if (resumed) {
      this.openTypingStream();
      return;
    }
    try {
      const res = await this.chat.join({ room: this.room });
      this.members.clear();
      for (const m of res.members) this.members.set(m.user, m.online);
      this.showMembers();
      // Message ids are the server's: a restarted server numbers afresh,
      // so what is on screen is replaced by the history it has now.
      this.seen.clear();
      $("messages").replaceChildren();
      for (const m of res.history) this.showMessage(m);
      this.system(`reconnected with a new session: rejoined ${this.room}`);
      this.openTypingStream();
    } catch (e) {
      this.system(`could not rejoin ${this.room}: ${ParleyError.from(e).message}`);
    }
  }

  /** Subscribes to the server's events and answers its calls. */
  subscribe(): void {
    const events = new ChatEventsSubscriber(this.conn);
    events.onMessagePosted((m) => {
      if (m.room == this.room) this.showMessage(m);
    });
    events.onUserJoined((ev) => {
      if (ev.room != this.room) return;
      this.members.set(ev.user, ev.online);
      this.showMembers();
      this.system(`${ev.user} joined`);
    });
    events.onUserLeft((ev) => {
      if (ev.room != this.room) return;
      this.members.delete(ev.user);
      this.showMembers();
      const how = ev.reason == "kicked" ? ` (removed by ${ev.by})` : "";
      if (ev.user == this.user) {
        this.joined = false;
        this.system(`you left ${ev.room}${how}; reload to join again`);
        $<HTMLInputElement>("text").disabled = $<HTMLButtonElement>("send").disabled = true;
      } else {
        this.system(`${ev.user} left${how}`);
      }
    });
    events.onPresenceChanged((ev) => {
      if (!this.members.has(ev.user)) return;
      this.members.set(ev.user, ev.online);
      this.showMembers();
    });
    // ChatEvents.Typing is not subscribed: the page learns who types from
    // its TypingStream instead.
    registerChatEventsHandler(this.conn, {
      confirmLeave: (req, { signal }) => this.confirmLeave(req.by, req.room, req.reason, signal),
    });
  }

  /**
   * Asks the user whether to leave, in a dialog; resolves with the answer.
   * If the server gives up first (the call's deadline), the dialog closes.
   */
  confirmLeave(by: string, room: string, reason: string, signal: AbortSignal): Promise<{ accept: boolean; message: string }> {
    const dialog = $<HTMLDialogElement>("confirm");
    $("confirm-text").textContent = `${by} asks you to leave ${room}${reason ? `: “${reason}”` : "."}`;
    dialog.show();
    return new Promise((resolve, reject) => {
      const done = (accept: boolean) => {
        cleanup();
        resolve({ accept, message: accept ? "" : `${this.user} would rather stay` });
      };
      const leave = () => done(true);
      const stay = () => done(false);
      const abort = () => {
        cleanup();
        reject(signal.reason);
      };
      const cleanup = () => {
        dialog.close();
        $("confirm-leave").removeEventListener("click", leave);
        $("confirm-stay").removeEventListener("click", stay);
        signal.removeEventListener("abort", abort);
      };
      $("confirm-leave").addEventListener("click", leave);
      $("confirm-stay").addEventListener("click", stay);
      signal.addEventListener("abort", abort);
    });
  }

  async join(): Promise<void> {
    const res = await this.chat.join({ room: this.room });
    this.joined = true;
    for (const m of res.members) this.members.set(m.user, m.online);
    this.showMembers();
    for (const m of res.history) this.showMessage(m);
    $("whoami").textContent = `${this.user} in ${this.room}`;
    $("room-name").textContent = this.room;
    this.openTypingStream();
  }

  /**
   * Opens the bidirectional TypingStream: requests go out as the user
   * types (see onInput), responses say who types in the room.
   */
  openTypingStream(): void {
    const stream = this.chat.typingStream();
    this.typing = stream;
    (async () => {
      try {
        for await (const res of stream) {
          if (res.room != this.room) continue;
          const others = res.users.filter((u) => u != this.user);
          const line = $("typing");
          line.dataset.users = others.join(",");
          line.textContent =
            others.length == 0 ? ""
            : others.length == 1 ? `${others[0]} is typing…`
            : `${others.slice(0, -1).join(", ")} and ${others.at(-1)} are typing…`;
        }
      } catch (e) {
        if (this.typing == stream) this.typing = undefined;
        const err = ParleyError.from(e);
        if (err.code != "canceled" && err.code != "unavailable") this.system(`typing indicator stopped: ${err.message}`);
      }
    })();
  }

  /** Tells the TypingStream whether the user is typing, refreshing it while they do. */
  onInput(value: string): void {
    const typing = value.trim() != "" && !value.startsWith("/");
    const now = Date.now();
    if (typing && now - this.typingSentAt < typingRefreshMs) return;
    if (!typing && this.typingSentAt == 0) return;
    this.typingSentAt = typing ? now : 0;
    this.typing?.send({ room: this.room, typing }).catch(() => {});
  }

  async submit(text: string): Promise<void> {
    this.typingSentAt = 0; // posting stops typing, on the server too
    if (text.startsWith("/")) return this.command(text);
    await this.chat.post({ room: this.room, text, clientMessageId: newId() });
  }

  async command(line: string): Promise<void> {
    const [verb = "", who = "", ...rest] = line.slice(1).split(/\s+/);
    switch (verb) {
      case "kick": {
        const res = await this.chat.kick({ room: this.room, user: who, reason: rest.join(" ") });
        if (!res.removed) this.system(`${who} stays: ${res.message || "declined"}`);
        return;
      }
      case "rooms": {
        const res = await this.chat.listRooms({});
        this.system(res.rooms.map((r) => `${r.name} (${r.online}/${r.members} online)`).join(", ") || "no rooms");
        return;
      }
      case "leave":
        await this.chat.leave({ room: this.room });
        this.joined = false;
        return;
    }
    this.system(`unknown command /${verb}: try /kick NAME [REASON], /rooms, /leave`);
  }

  showMessage(m: ChatMessage): void {
    if (this.seen.has(m.id)) return; // in Join's history and as an event
    this.seen.add(m.id);
    const time = m.sentAt ? timestampDate(m.sentAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
    const li = el("li", {}, el("span", { className: "time", textContent: time }), el("span", { className: "user", textContent: m.user }), el("span", { className: "text", textContent: m.text }));
    li.dataset.id = String(m.id);
    li.dataset.user = m.user;
    this.append(li);
  }

  system(text: string): void {
    this.append(el("li", { className: "system", textContent: text }));
  }

  append(li: HTMLLIElement): void {
    const list = $("messages");
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.append(li);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  showMembers(): void {
    const members = [...this.members].sort(([a], [b]) => a.localeCompare(b));
    $("members").replaceChildren(
      ...members.map(([user, online]) => {
        const li = el("li", { textContent: user == this.user ? `${user} (you)` : user, title: online ? "online" : "offline" });
        li.dataset.user = user;
        li.dataset.online = String(online);
        return li;
      }),
    );
  }
}

function newId(): string {
  // randomUUID exists in secure contexts only (https, localhost).
  if (typeof crypto !== "undefined" && "randomUUID" in crypto) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

async function signIn(user: string, room: string): Promise<void> {
  const page = new ChatPage(user, room);
  try {
    await page.join();
  } catch (e) {
    page.conn.close();
    $("signin-error").textContent = ParleyError.from(e).message;
    return;
  }
  $("signin").hidden = true;
  $("chat").hidden = false;
  const input = $<HTMLInputElement>("text");
  input.addEventListener("input", () => page.onInput(input.value));
  $("composer").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    try {
      await page.submit(text);
    } catch (e) {
      page.system(`failed: ${ParleyError.from(e).message}`);
    }
  });
  input.focus();
}

$("signin").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  void signIn($<HTMLInputElement>("name").value.trim(), $<HTMLInputElement>("room").value.trim());
});
const user = params.get("user");
if (user) {
  $<HTMLInputElement>("name").value = user;
  $<HTMLInputElement>("room").value = params.get("room") ?? "lobby";
  void signIn(user, params.get("room") ?? "lobby");
}
