// Shared by both pages: the query string, the on-page result list, and the in-page assertion.
// The page sets window.client* hooks; run.mjs drives it through window.pigeonTest.
(function () {
  const params = new URLSearchParams(location.search);
  const log = document.getElementById('log');
  const status = document.getElementById('status');
  const received = [];

  function line(text, kind) {
    const li = document.createElement('li');
    li.textContent = text;
    if (kind) li.className = kind;
    log.appendChild(li);
  }

  window.pigeonTest = {
    url: params.get('url'),
    clientId: params.get('id'),
    topic: params.get('topic') || 'browser/room',
    ready: false,
    error: null,
    received,
    line,
    onMessage(topic, payload) {
      received.push({ topic, payload });
      line(`received on ${topic}: ${payload}`, 'message');
    },
    fail(message) {
      this.error = message;
      status.textContent = `FAILED: ${message}`;
      status.className = 'fail';
      line(message, 'fail');
    },
    // The assertion, in the page: every expected payload has arrived, on the right topic.
    check(expected) {
      const missing = expected.filter(
        (e) => !received.some((r) => r.payload === e.payload && r.topic === e.topic));
      if (missing.length === 0 && !this.error) {
        status.textContent = `PASS: ${expected.length} expected messages received`;
        status.className = 'pass';
        return { ok: true };
      }
      status.textContent = `waiting for ${missing.map((m) => m.payload).join(', ')}`;
      return { ok: false, missing, error: this.error };
    },
  };
})();
