/**
 * Slipway's web UI: renders each page from the JSON API under /api/v1 and keeps what runs up
 * to date by polling it (build logs stream through log.js). The page's session cookie opens
 * the API; every change also sends the session's CSRF token in a header, which a form posted
 * from another site cannot set. Everything shown from the API is inserted as text, never as
 * markup: build logs, commit messages and branch names are written by others.
 */
'use strict';

(function () {
  const CSRF = metaContent('slipway-csrf');
  const SCOPES = metaContent('slipway-scopes').split(' ').filter(Boolean);
  const main = document.getElementById('main');
  const nav = document.getElementById('nav');
  const alertBox = document.getElementById('alert');
  /** Timers of the page shown now, stopped when it re-renders. */
  const timers = [];
  /** The release each environment's lists had chosen, by the list's id. */
  const chosen = {};

  function metaContent(name) {
    const meta = document.querySelector('meta[name="' + name + '"]');
    return meta ? meta.content : '';
  }

  // ---- what the signed-in token may do (as auth.rs decides; the server checks again) ----
  function can(scope, environment) {
    if (SCOPES.includes('admin')) return true;
    if (scope === 'build') return SCOPES.includes('build');
    if (scope === 'deploy') {
      return SCOPES.includes('deploy:*') || SCOPES.includes('deploy:' + environment);
    }
    return false;
  }

  // ---- building elements ----
  /** h('a', {href: '/x', class: 'y'}, 'text', child) — strings become text nodes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith('on') && typeof value === 'function') {
        el.addEventListener(key.slice(2), value);
      } else if (key === 'class') {
        el.className = value;
      } else {
        el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function badge(status) {
    const text = status || 'unknown';
    return h('span', { class: 'badge s-' + text.replace(/[^a-z_]/g, '') }, text.replace(/_/g, ' '));
  }

  function shortCommit(commit) {
    return (commit || '').slice(0, 10);
  }

  function when(at) {
    if (!at) return '';
    const date = new Date(at);
    return h('time', { datetime: at, title: date.toLocaleString() }, ago(date));
  }

  function ago(date) {
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    if (seconds < 5) return 'just now';
    if (seconds < 60) return seconds + ' s ago';
    if (seconds < 3600) return Math.floor(seconds / 60) + ' min ago';
    if (seconds < 86400) return Math.floor(seconds / 3600) + ' h ago';
    return date.toLocaleDateString();
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return '';
    const seconds = Math.round(ms / 1000);
    if (seconds < 60) return seconds + ' s';
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + ' min ' + (seconds % 60) + ' s';
    return Math.floor(minutes / 60) + ' h ' + (minutes % 60) + ' min';
  }

  function between(start, end) {
    if (!start) return null;
    const until = end ? new Date(end) : new Date();
    return until - new Date(start);
  }

  function table(headings, rows, caption) {
    return h('div', { class: 'table-wrap' },
      h('table', {},
        caption ? h('caption', {}, caption) : null,
        h('thead', {}, h('tr', {}, headings.map((text) => h('th', { scope: 'col' }, text)))),
        h('tbody', {}, rows)));
  }

  function show(...children) {
    fill(main, ...children);
  }

  /** Replaces `el`'s children, skipping the absent ones (which the DOM would show as "null"). */
  function fill(el, ...children) {
    el.replaceChildren(...children.flat(Infinity).filter((child) => child !== null && child !== undefined && child !== false));
  }

  function showError(message) {
    alertBox.textContent = message;
    alertBox.hidden = !message;
  }

  // ---- talking to the API ----
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options) {
    const init = Object.assign({ credentials: 'same-origin', headers: {} }, options || {});
    init.headers = Object.assign({ Accept: 'application/json' }, init.headers);
    if (init.method && init.method !== 'GET') init.headers['X-Slipway-CSRF'] = CSRF;
    const response = await fetch('/api/v1' + path, init);
    if (response.status === 401) {
      location.assign('/sign-in?next=' + encodeURIComponent(location.pathname + location.search));
      throw new ApiError(401, 'sign in again');
    }
    const type = response.headers.get('Content-Type') || '';
    if (!response.ok) {
      let message = response.status + ' ' + response.statusText;
      if (type.includes('json')) {
        const body = await response.json();
        if (body && body.error) message = body.error;
      }
      throw new ApiError(response.status, message);
    }
    return type.includes('json') ? response.json() : response;
  }

  function post(path, body) {
    return api(path, {
      method: 'POST',
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  /** Runs `refresh` now and every `ms` while `more()` says so; errors show and it goes on. */
  function poll(refresh, ms, more) {
    let stopped = false;
    async function tick() {
      if (stopped) return;
      try {
        await refresh();
        showError('');
      } catch (error) {
        if (error.status !== 401) showError(error.message);
      }
      if (!stopped && (!more || more())) timers.push(setTimeout(tick, ms));
    }
    timers.push({ stop: () => { stopped = true; } });
    return tick();
  }

  function stopTimers() {
    for (const timer of timers.splice(0)) {
      if (timer && timer.stop) timer.stop(); else clearTimeout(timer);
    }
  }

  // ---- confirmation of actions ----
  const dialog = document.getElementById('confirm');

  /** Asks to confirm `title` (naming what and where); resolves true on the confirm button. */
  function confirmAction(title, detail, button) {
    document.getElementById('confirm-title').textContent = title;
    document.getElementById('confirm-detail').textContent = detail;
    const ok = document.getElementById('confirm-ok');
    ok.textContent = button;
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.showModal();
      ok.focus();
    });
  }

  /**
   * A button that asks to confirm, then runs `act`, showing its error if it fails.
   * `confirmation` is {title, detail, button}, or a function making one when pressed (so it
   * names the release chosen then).
   */
  function actionButton(label, confirmation, act, extraClass) {
    const button = h('button', { type: 'button', class: 'action ' + (extraClass || '') }, label);
    button.addEventListener('click', async () => {
      const c = typeof confirmation === 'function' ? confirmation() : confirmation;
      if (!(await confirmAction(c.title, c.detail, c.button))) return;
      button.disabled = true;
      try {
        await act();
        showError('');
      } catch (error) {
        showError(error.message);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  /**
   * Promote and rollback answer with a server-sent event stream of the deployment; the page
   * reads it until the deployment has an id, then shows the deployment's page, which follows
   * it (the deployment goes on whether or not anyone reads the stream).
   */
  async function startDeployment(project, environment, path, body) {
    const response = await post('/projects/' + enc(project) + '/environments/' + enc(environment) + '/' + path, body);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      const id = deploymentId(text);
      if (id) {
        reader.cancel().catch(() => {});
        location.assign('/projects/' + enc(project) + '/deployments/' + enc(id));
        return;
      }
    }
    throw new Error('the deployment ended without saying which it was');
  }

  function deploymentId(text) {
    for (const block of text.split('\n\n')) {
      const data = block.split('\n').filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).trim()).join('\n');
      if (!data) continue;
      try {
        const event = JSON.parse(data);
        if (event.deployment && typeof event.deployment === 'string') return event.deployment;
        if (event.deployment && event.deployment.id) return event.deployment.id;
      } catch (_) { /* an event cut in two: the next read completes it */ }
    }
    return null;
  }

  function enc(part) {
    return encodeURIComponent(part);
  }

  // ---- navigation ----
  function projectNav(project) {
    const here = location.pathname;
    const link = (href, text) => h('a', { href, 'aria-current': here === href ? 'page' : null }, text);
    fill(nav, 
      link('/', 'Projects'),
      link('/projects/' + enc(project), project + ' · Builds'),
      link('/projects/' + enc(project) + '/releases', 'Releases'),
      link('/projects/' + enc(project) + '/environments', 'Environments'),
      link('/agents', 'Agents'));
  }

  function topNav() {
    const here = location.pathname;
    fill(nav, 
      h('a', { href: '/', 'aria-current': here === '/' ? 'page' : null }, 'Projects'),
      h('a', { href: '/agents', 'aria-current': here === '/agents' ? 'page' : null }, 'Agents'));
  }

  // ---- pages ----
  async function projectsPage() {
    topNav();
    document.title = 'Projects · Slipway';
    const projects = await api('/projects');
    const rows = await Promise.all(projects.map(async (project) => {
      let last = null;
      try {
        [last] = await api('/projects/' + enc(project.name) + '/builds?limit=1');
      } catch (_) { /* shown as no build */ }
      return h('tr', {},
        h('td', {}, h('a', { href: '/projects/' + enc(project.name) }, project.name)),
        h('td', {}, last ? [badge(last.status), ' ', h('a', { href: '/projects/' + enc(project.name) + '/builds/' + last.number }, '#' + last.number)] : 'no builds'),
        h('td', { class: 'mono' }, project.deploy_branch || ''),
        h('td', {}, project.environments.map((name, i) => [i ? ', ' : '', h('a', { href: '/projects/' + enc(project.name) + '/environments#env-' + name }, name)])),
        h('td', {}, h('a', { href: '/projects/' + enc(project.name) + '/releases' }, 'releases')));
    }));
    show(h('h1', {}, 'Projects'),
      projects.length ? table(['Project', 'Last build', 'Deploy branch', 'Environments', ''], rows)
        : h('p', {}, 'No project is configured.'));
  }

  /** The mean duration of the newest passed builds: what a running build is measured against. */
  function typicalDuration(builds) {
    const passed = builds.filter((b) => b.status === 'passed' && b.started_at && b.finished_at).slice(0, 10);
    if (!passed.length) return null;
    return passed.reduce((sum, b) => sum + between(b.started_at, b.finished_at), 0) / passed.length;
  }

  function progressBar(build, typical) {
    if (build.status !== 'running' || !build.started_at) return null;
    const elapsed = between(build.started_at);
    if (!typical) return h('span', { class: 'muted' }, duration(elapsed) + ' so far');
    const fraction = Math.min(elapsed / typical, 0.99);
    const label = elapsed > typical
      ? duration(elapsed) + ', longer than the usual ' + duration(typical)
      : Math.round(fraction * 100) + '% (' + duration(elapsed) + ' of about ' + duration(typical) + ')';
    return h('div', { class: 'progress-cell' },
      h('progress', { max: 100, value: Math.round(fraction * 100), 'aria-label': label }),
      h('span', { class: 'muted small' }, label));
  }

  async function buildsPage(project) {
    projectNav(project);
    document.title = project + ' · Builds · Slipway';
    const list = h('div', {});
    show(h('h1', {}, project, ' · Builds'), list);
    await poll(async () => {
      const builds = await api('/projects/' + enc(project) + '/builds?limit=50');
      const typical = typicalDuration(builds);
      const rows = builds.map((build) => h('tr', { 'data-build': build.number },
        h('td', {}, h('a', { href: '/projects/' + enc(project) + '/builds/' + build.number }, '#' + build.number)),
        h('td', {}, badge(build.status), progressBar(build, typical)),
        h('td', { class: 'mono' }, build.branch),
        h('td', {}, h('span', { class: 'mono' }, shortCommit(build.commit)), ' ', h('span', { class: 'message' }, build.message || '')),
        h('td', {}, build.author || ''),
        h('td', {}, build.event + (build.pull_request ? ' #' + build.pull_request.id : '')),
        h('td', {}, duration(between(build.started_at, build.finished_at))),
        h('td', {}, when(build.queued_at))));
      fill(list, builds.length
        ? table(['Build', 'Status', 'Branch', 'Commit', 'Author', 'Event', 'Duration', 'Queued'], rows)
        : h('p', {}, 'No builds yet.'));
    }, 2000, () => true);
  }

  /** Whether a build's status is its last: anything but queued and running. */
  function isFinal(status) {
    return status !== 'queued' && status !== 'running';
  }

  async function buildPage(project, number) {
    projectNav(project);
    document.title = project + ' #' + number + ' · Slipway';
    const base = '/projects/' + enc(project) + '/builds/' + enc(number);
    const header = h('div', {});
    const steps = h('div', {});
    const logBox = h('div', { class: 'log-box', id: 'log' });
    show(header, steps, h('h2', {}, 'Log'), logBox);
    // The log loads while the build's record is asked for. It is followed even for a build
    // that ended: the stream then only says so, and a build that runs is never missed.
    const view = new window.SlipwayLog.LogView(logBox, { fileName: project + '-build-' + number + '.log' });
    window.SlipwayLog.loadLog(view, '/api/v1' + base + '/logs', {
      live: true,
      onError: (error) => showError(error.message || String(error)),
    });
    let build = await api(base);
    let final = isFinal(build.status);
    const render = () => {
      fill(header, 
        h('h1', {}, project, ' #', String(build.number), ' ', badge(build.status)),
        build.reason ? h('p', { class: 'reason' }, build.reason) : null,
        h('dl', { class: 'facts' },
          fact('Branch', h('span', { class: 'mono' }, build.branch)),
          fact('Commit', [h('span', { class: 'mono' }, shortCommit(build.commit)), ' ', build.message || '']),
          fact('Author', build.author || ''),
          fact('Event', build.event),
          fact('Queued', when(build.queued_at)),
          fact('Duration', duration(between(build.started_at, build.finished_at))),
          build.agent ? fact('Agent', build.agent + (build.attempt > 1 ? ' (attempt ' + build.attempt + ')' : '')) : null,
          build.release_skipped ? fact('No release', build.release_skipped) : null),
        h('div', { class: 'actions' },
          can('build') && !isFinal(build.status) ? actionButton('Cancel build', {
            title: 'Cancel build #' + build.number + ' of ' + project + '?',
            detail: 'Its steps stop and its containers are removed.',
            button: 'Cancel build #' + build.number,
          }, async () => { build = await post(base + '/cancel'); render(); }, 'danger') : null,
          can('build') ? actionButton('Rebuild', {
            title: 'Rebuild #' + build.number + ' of ' + project + '?',
            detail: 'A new build of commit ' + shortCommit(build.commit) + ' on ' + build.branch + ' is queued.',
            button: 'Queue the rebuild',
          }, async () => {
            const queued = await post(base + '/rebuild');
            location.assign('/projects/' + enc(project) + '/builds/' + queued.number);
          }) : null));
      const rows = (build.steps || []).map((step) => h('tr', { 'data-step': step.name },
        h('td', {}, step.name), h('td', {}, badge(step.status)),
        h('td', {}, step.attempt > 1 ? String(step.attempt) : ''),
        h('td', {}, step.exit_code === null || step.exit_code === undefined ? '' : String(step.exit_code)),
        h('td', {}, when(step.started_at)),
        h('td', {}, duration(step.duration_ms !== null && step.duration_ms !== undefined
          ? step.duration_ms : between(step.started_at, step.finished_at)))));
      fill(steps, rows.length ? table(['Step', 'Status', 'Attempt', 'Exit', 'Started', 'Duration'], rows, 'Steps') : null);
    };
    render();
    if (!final) {
      poll(async () => {
        build = await api(base);
        render();
        final = isFinal(build.status);
      }, 2000, () => !final);
    }
  }

  function fact(name, value) {
    return [h('dt', {}, name), h('dd', {}, value)];
  }

  async function releasesPage(project) {
    projectNav(project);
    document.title = project + ' · Releases · Slipway';
    const list = h('div', {});
    show(h('h1', {}, project, ' · Releases'), list);
    await poll(async () => {
      const [releases, environments] = await Promise.all([
        api('/projects/' + enc(project) + '/releases'),
        api('/projects/' + enc(project) + '/environments'),
      ]);
      fill(list, ...releases.map((release) => releaseCard(project, release, environments)));
      if (!releases.length) fill(list, h('p', {}, 'No releases yet.'));
    }, 5000, () => true);
  }

  function runsIn(release, environments) {
    const places = [];
    for (const env of environments) {
      if (env.live && env.live.release === release.version) places.push(env.name + ' (live)');
      for (const d of env.deployments || []) {
        if (d.state === 'retaining_blue' && d.blue && d.blue.release === release.version) {
          places.push(env.name + ' (warm)');
        }
      }
    }
    return places;
  }

  function releaseCard(project, release, environments) {
    const places = runsIn(release, environments);
    const images = (release.images || []).map((image) => h('li', {},
      image.kind + (image.region ? ' ' + image.region : '') + ': ', badge(image.status), ' ',
      h('span', { class: 'mono' }, image.name || image.id || ''),
      image.reason ? h('span', { class: 'reason' }, ' ' + image.reason) : null,
      ' ', bakeLogToggle(project, release.version, image)));
    const pkg = release.package;
    return h('section', { class: 'card', id: 'release-' + release.version, 'data-release': release.version },
      h('h2', {}, release.version, ' ', badge(release.status),
        places.length ? h('span', { class: 'where' }, ' runs in ' + places.join(', ')) : null),
      release.reason ? h('p', { class: 'reason' }, release.reason) : null,
      h('dl', { class: 'facts' },
        fact('Commit', h('span', { class: 'mono' }, shortCommit(release.commit))),
        fact('Build', h('a', { href: '/projects/' + enc(project) + '/builds/' + release.build }, '#' + release.build)),
        fact('Package', pkg ? [h('span', { class: 'mono' }, pkg.name + ' ' + pkg.version), pkg.sha256 ? h('span', { class: 'mono muted small' }, ' sha256 ' + pkg.sha256.slice(0, 16) + '…') : null] : '—'),
        fact('Bake', release.bake_status ? badge(release.bake_status) : '—'),
        fact('Created', when(release.created_at))),
      images.length ? h('ul', { class: 'images' }, images) : null,
      h('div', { class: 'actions' },
        can('admin') && release.status === 'published' ? actionButton('Rebake', {
          title: 'Rebake ' + release.version + ' of ' + project + '?',
          detail: 'Its Docker image is baked again from its package; the new image replaces the recorded one.',
          button: 'Rebake ' + release.version,
        }, async () => { await post('/projects/' + enc(project) + '/releases/' + enc(release.version) + '/rebake'); }) : null,
        environments.filter((env) => can('deploy', env.name)).map((env) =>
          actionButton('Promote to ' + env.name, promoteConfirmation(project, release.version, env), () =>
            startDeployment(project, env.name, 'promote', { release: release.version })))));
  }

  function promoteConfirmation(project, version, env) {
    return {
      title: 'Promote ' + version + ' to ' + env.name + '?',
      detail: project + ' ' + version + ' is deployed to ' + env.name + ' (live now: ' + (env.live ? env.live.release : 'nothing') + '). New instances start and must turn healthy before traffic moves to them.',
      button: 'Promote ' + version + ' to ' + env.name,
    };
  }

  function bakeLogToggle(project, version, image) {
    const details = h('details', { class: 'bake-log' }, h('summary', {}, 'bake log'));
    const pre = h('pre', { class: 'plain-log' });
    details.append(pre);
    details.addEventListener('toggle', async () => {
      if (!details.open || pre.dataset.loaded) return;
      const query = image.kind === 'ami' ? '?kind=ami&region=' + enc(image.region) : '?kind=docker';
      try {
        const lines = await api('/projects/' + enc(project) + '/releases/' + enc(version) + '/bake-log' + query);
        pre.textContent = lines.map((l) => l.line).join('\n') || '(empty)';
        pre.dataset.loaded = '1';
      } catch (error) {
        pre.textContent = error.message;
      }
    });
    return details;
  }

  async function environmentsPage(project) {
    projectNav(project);
    document.title = project + ' · Environments · Slipway';
    const list = h('div', {});
    show(h('h1', {}, project, ' · Environments'), list);
    await poll(async () => {
      const [environments, releases] = await Promise.all([
        api('/projects/' + enc(project) + '/environments'),
        api('/projects/' + enc(project) + '/releases'),
      ]);
      // A dialog open on a card, or a release list in use, stays: no re-render meanwhile.
      if (dialog.open || (document.activeElement && document.activeElement.tagName === 'SELECT')) return;
      const deployable = releases.filter((r) => r.status === 'published').map((r) => r.version); // newest first, as the API lists them
      fill(list, ...environments.map((env) => environmentCard(project, env, deployable)));
    }, 3000, () => true);
  }

  function environmentCard(project, env, deployable) {
    const health = env.health || {};
    const checks = (health.checks || []).map((check) => h('li', {},
      h('span', { class: 'mono' }, check.instance), ' ', badge(check.state), check.detail ? h('span', { class: 'muted small' }, ' ' + check.detail) : null));
    const warm = (env.deployments || []).filter((d) => d.state === 'retaining_blue' && d.blue);
    const history = (env.deployments || []).map((d) => h('tr', { 'data-deployment': d.id },
      h('td', {}, h('a', { href: '/projects/' + enc(project) + '/deployments/' + enc(d.id) }, d.release)),
      h('td', {}, d.kind === 'switch_back' ? 'switch back' : 'deploy'),
      h('td', {}, badge(d.state)),
      h('td', {}, when(d.created_at)),
      h('td', {}, duration(between(d.created_at, d.updated_at))),
      h('td', {}, stepTimings(project, d)),
      h('td', { class: 'reason' }, d.reason || '')));
    const lock = env.lock;
    return h('section', { class: 'card', id: 'env-' + env.name, 'data-environment': env.name },
      h('h2', {}, env.name, ' ', h('span', { class: 'muted small' }, env.target || '')),
      h('dl', { class: 'facts' },
        fact('Live', env.live ? h('span', { class: 'live-release' }, env.live.release) : 'nothing yet'),
        fact('Health', health.error ? health.error
          : (health.instances !== undefined ? health.healthy + ' of ' + health.instances + ' healthy' : '—')),
        fact('Warm', warm.length ? warm.map((d) => d.blue.release + ' until ' + new Date(d.retain_until).toLocaleTimeString()).join(', ') : 'none'),
        fact('Lock', lock ? lock.owner + ' since ' + new Date(lock.acquired_at).toLocaleTimeString() : 'free'),
        env.busy ? fact('Busy', env.busy.operation + ' by ' + env.busy.owner) : null,
        env.schema ? fact('Schema', String(env.schema.version !== undefined ? env.schema.version : JSON.stringify(env.schema))) : null),
      checks.length ? h('ul', { class: 'checks' }, checks) : null,
      awsFleets(env.aws),
      loadBalancer(env.load_balancer),
      deployActions(project, env, deployable),
      history.length ? table(['Release', 'Kind', 'State', 'Started', 'Took', 'Steps', 'Reason'], history, 'Deployments') : h('p', { class: 'muted' }, 'No deployments yet.'));
  }

  /** Each deployment's steps and their timings, fetched once it is opened (and kept open). */
  const openTimings = {};
  function stepTimings(project, d) {
    const details = h('details', { class: 'timings', open: openTimings[d.id] ? true : null },
      h('summary', {}, 'timings'));
    const list = h('ol', { class: 'small' });
    details.append(list);
    const load = async () => {
      try {
        const full = await api('/projects/' + enc(project) + '/deployments/' + enc(d.id));
        fill(list, (full.steps || []).map((step) => h('li', {},
          step.step.replace(/_/g, ' ') + ' ',
          h('span', { class: 'muted' }, step.finished_at ? duration(step.elapsed_ms) : 'running'),
          step.error ? h('span', { class: 'reason' }, ' ' + step.error) : null)));
      } catch (error) {
        fill(list, h('li', { class: 'reason' }, error.message));
      }
    };
    details.addEventListener('toggle', () => {
      openTimings[d.id] = details.open;
      if (details.open) load();
    });
    if (openTimings[d.id]) load();
    return details;
  }

  function awsFleets(aws) {
    if (!aws) return null;
    if (aws.error) return h('p', { class: 'reason' }, aws.error);
    return h('div', {}, h('h3', {}, 'Auto Scaling groups (launch template ' + aws.launch_template_id + ', default version ' + (aws.default_version === null ? '—' : aws.default_version) + ')'),
      table(['Group', 'Release', 'Serving', 'Template version', 'AMI', 'Instances'], aws.fleets.map((fleet) => h('tr', {},
        h('td', { class: 'mono' }, fleet.auto_scaling_group), h('td', {}, fleet.release),
        h('td', {}, fleet.serving ? 'yes' : 'no'), h('td', {}, fleet.launch_template_version || ''),
        h('td', { class: 'mono' }, fleet.ami || ''),
        h('td', {}, fleet.instances.map((i) => [h('span', { class: 'mono' }, i.instance), ' ', badge(i.state), ' '])))))
    );
  }

  function loadBalancer(lb) {
    if (!lb) return null;
    if (lb.error) return h('p', { class: 'reason' }, lb.error);
    const rows = (lb.stats || []).map((row) => h('tr', {},
      h('td', {}, row.proxy), h('td', {}, row.name), h('td', {}, row.status),
      h('td', {}, [row.check_status, row.check_code].filter(Boolean).join(' ')),
      h('td', {}, String(row.current_sessions)), h('td', {}, String(row.total_sessions !== undefined ? row.total_sessions : ''))));
    return h('details', { class: 'lb' }, h('summary', {}, 'Load balancer ', badge(lb.state), ' on ' + lb.listen),
      rows.length ? table(['Proxy', 'Name', 'Status', 'Check', 'Sessions now', 'Sessions'], rows) : null);
  }

  function deployActions(project, env, deployable) {
    if (!can('deploy', env.name) || !deployable.length) return null;
    const live = env.live ? env.live.release : null;
    // What was chosen survives the card's re-render.
    const select = (id, fallback) => {
      const el = h('select', { id, onchange: () => { chosen[id] = el.value; } },
        deployable.map((v) => h('option', { value: v }, v + (v === live ? ' (live)' : ''))));
      el.value = chosen[id] && deployable.includes(chosen[id]) ? chosen[id] : fallback;
      return el;
    };
    const notLive = deployable.filter((v) => v !== live);
    const previous = notLive.find((v) => live && Number(v.slice(1)) < Number(live.slice(1)));
    const promoteSelect = select('promote-' + env.name, notLive[0] || deployable[0]);
    const rollbackSelect = select('rollback-' + env.name, previous || notLive[0] || deployable[0]);
    const promote = actionButton('Promote', () => promoteConfirmation(project, promoteSelect.value, env),
      () => startDeployment(project, env.name, 'promote', { release: promoteSelect.value }));
    const rollback = actionButton('Roll back', () => ({
      title: 'Roll ' + env.name + ' back to ' + rollbackSelect.value + '?',
      detail: project + ' in ' + env.name + ' goes from ' + (live || 'nothing') + ' to ' + rollbackSelect.value + ': at once to its warm fleet if it has one, else by a deployment.',
      button: 'Roll ' + env.name + ' back to ' + rollbackSelect.value,
    }), () => startDeployment(project, env.name, 'rollback', { to: rollbackSelect.value }), 'danger');
    return h('div', { class: 'actions deploy-actions' },
      h('label', { for: 'promote-' + env.name }, 'Release '), promoteSelect, ' ', promote,
      h('span', { class: 'gap' }),
      h('label', { for: 'rollback-' + env.name }, 'Roll back to '), rollbackSelect, ' ', rollback);
  }

  async function deploymentPage(project, id) {
    projectNav(project);
    document.title = project + ' · Deployment · Slipway';
    const box = h('div', {});
    show(box);
    let done = false;
    await poll(async () => {
      const d = await api('/projects/' + enc(project) + '/deployments/' + enc(id));
      // Retaining blue: live and watched; only the old fleet's retirement is still to come.
      done = ['succeeded', 'rolled_back', 'failed', 'retaining_blue'].includes(d.state);
      const rows = (d.steps || []).map((step) => h('tr', { 'data-step': step.step, class: step.finished_at ? '' : 'current' },
        h('td', {}, step.step.replace(/_/g, ' ')),
        h('td', {}, step.finished_at ? (step.error ? badge('failed') : badge('done')) : badge('running')),
        h('td', {}, when(step.started_at)),
        h('td', {}, duration(step.elapsed_ms !== null && step.elapsed_ms !== undefined ? step.elapsed_ms : between(step.started_at))),
        h('td', { class: 'reason' }, step.error || '')));
      fill(box, 
        h('h1', {}, project, ' · ', d.release, ' to ', d.environment, ' ', h('span', { id: 'deployment-state' }, badge(d.state))),
        d.reason ? h('p', { class: 'reason' }, d.reason) : null,
        h('dl', { class: 'facts' },
          fact('Kind', d.kind === 'switch_back' ? 'switch back to a warm fleet' : 'deploy'),
          fact('Image', h('span', { class: 'mono' }, d.image)),
          fact('Instances', String(d.instances)),
          fact('From', d.blue ? d.blue.release : 'nothing'),
          fact('Started', when(d.created_at)),
          fact('Requested by', d.requested_by ? (d.requested_by.name || JSON.stringify(d.requested_by)) : 'auto-deploy')),
        table(['Step', 'Status', 'Started', 'Took', 'Error'], rows, 'Steps'),
        h('p', {}, h('a', { href: '/projects/' + enc(project) + '/environments#env-' + d.environment }, 'Back to the environments')));
    }, 1000, () => !done);
  }

  async function agentsPage() {
    topNav();
    document.title = 'Agents · Slipway';
    const list = h('div', {});
    show(h('h1', {}, 'Build agents'), list);
    await poll(async () => {
      const body = await api('/agents');
      const rows = body.agents.map((agent) => h('tr', {},
        h('td', {}, agent.name), h('td', {}, badge(agent.state)),
        h('td', {}, String(agent.capacity)),
        h('td', { class: 'mono' }, Object.entries(agent.labels || {}).map(([k, v]) => k + '=' + v).join(', ')),
        h('td', {}, when(agent.last_heartbeat)),
        h('td', {}, agent.version),
        h('td', {}, (agent.running || []).join(', '))));
      fill(list, rows.length ? table(['Agent', 'State', 'Capacity', 'Labels', 'Heartbeat', 'Version', 'Running'], rows)
        : h('p', {}, 'No build agent is registered; the servers run builds themselves.'));
    }, 5000, () => true);
  }

  // ---- routing: the server serves this shell at every page's path ----
  const routes = [
    [/^\/$/, () => projectsPage()],
    [/^\/agents$/, () => agentsPage()],
    [/^\/projects\/([^/]+)$/, (p) => buildsPage(p)],
    [/^\/projects\/([^/]+)\/builds\/(\d+)$/, (p, n) => buildPage(p, n)],
    [/^\/projects\/([^/]+)\/releases$/, (p) => releasesPage(p)],
    [/^\/projects\/([^/]+)\/environments$/, (p) => environmentsPage(p)],
    [/^\/projects\/([^/]+)\/deployments\/([^/]+)$/, (p, id) => deploymentPage(p, id)],
  ];

  async function route() {
    stopTimers();
    for (const [pattern, page] of routes) {
      const match = location.pathname.match(pattern);
      if (!match) continue;
      try {
        await page(...match.slice(1).map(decodeURIComponent));
      } catch (error) {
        if (error.status !== 401) show(h('h1', {}, 'Cannot show this page'), h('p', { class: 'reason' }, error.message));
      }
      return;
    }
    show(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/' }, 'Projects')));
  }

  route();
})();
