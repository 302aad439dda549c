/**
 * @file The build log viewer of Slipway's web UI.
 *
 * A build log can have hundreds of thousands of lines, arriving while the page is open. Putting
 * each line in the DOM makes the browser hang long before that, so `LogView` keeps the lines in
 * plain arrays and puts only the rows in view (plus a margin) in the DOM, all of one fixed height,
 * so that where a line is follows from its number alone. Appending only pushes to the arrays; the
 * DOM is brought up to date at most once per animation frame.
 *
 * Log text comes from whatever the build ran and is never trusted: it reaches the DOM only as
 * text nodes, never as markup. ANSI SGR colours become spans with classes (the 16 base colours,
 * so the style sheet can give them colours that read well in light and dark mode) or inline
 * colours (256 colours and truecolour); every other escape sequence is dropped.
 *
 * `loadLog` fills a view from the log API: the stored lines page by page, then, while the build
 * runs, new lines from the server-sent event stream, reconnecting from the last line it has
 * (EventSource's own retry would ask again from where it first started).
 *
 * A plain script, no modules and no build step: it defines `window.SlipwayLog`.
 */
(function () {
  'use strict';

  /** Lines per page asked of the log API (its maximum). */
  var PAGE_LINES = 10000;
  /**
   * Browsers cap an element's height (Firefox near 17.9 million pixels, Chromium near 33 million).
   * Beyond this the scrollable height stays here and scroll positions are scaled to lines.
   */
  var MAX_SCROLL_HEIGHT = 10000000;
  var SGR_BASE_CLASSES = 16;

  // --- ANSI -------------------------------------------------------------------------------------

  /** The colour of entry `n` (16–255) of the xterm 256-colour palette, as CSS. */
  function xterm256(n) {
    if (n >= 232) {
      var grey = 8 + (n - 232) * 10;
      return 'rgb(' + grey + ',' + grey + ',' + grey + ')';
    }
    var levels = [0, 95, 135, 175, 215, 255];
    var i = n - 16;
    return 'rgb(' + levels[Math.floor(i / 36)] + ',' + levels[Math.floor(i / 6) % 6] + ',' +
      levels[i % 6] + ')';
  }

  function clampByte(value) {
    var n = Number(value);
    if (!isFinite(n)) { return 0; }
    return Math.max(0, Math.min(255, Math.floor(n)));
  }

  function newStyle() {
    // A colour is null (the default), a number 0–15 (a class) or a CSS colour string.
    return { bold: false, dim: false, italic: false, underline: false, strike: false,
      fg: null, bg: null };
  }

  /**
   * An extended colour (38 or 48) starting at `params[i]` (the 5 or 2): the colour, and how many
   * parameters it took. A colour given wrong ends the whole sequence, as terminals do, because
   * what follows it cannot be told apart from its parameters.
   */
  function extendedColour(params, i) {
    if (params[i] === 5 && i + 1 < params.length) {
      var n = params[i + 1];
      if (n >= 0 && n <= 255) {
        return { colour: n < SGR_BASE_CLASSES ? n : xterm256(n), used: 2 };
      }
    } else if (params[i] === 2 && i + 3 < params.length) {
      return { colour: 'rgb(' + clampByte(params[i + 1]) + ',' + clampByte(params[i + 2]) + ',' +
        clampByte(params[i + 3]) + ')', used: 4 };
    }
    return null;
  }

  /** Applies one SGR sequence's parameters (`1;31` -> [1, 31]) to `style`. */
  function applySgr(style, paramText) {
    // `:` separates sub-parameters in the ITU form (38:2::r:g:b); read it like `;` except for
    // the empty colour-space field.
    var params = paramText === '' ? [0] : paramText.replace(/:(?=:)/g, '').split(/[;:]/).map(
      function (p) { return p === '' ? 0 : parseInt(p, 10); });
    for (var i = 0; i < params.length; i++) {
      var p = params[i];
      if (p === 0) {
        var fresh = newStyle();
        for (var key in fresh) { style[key] = fresh[key]; }
      } else if (p === 1) { style.bold = true; }
      else if (p === 2) { style.dim = true; }
      else if (p === 3) { style.italic = true; }
      else if (p === 4 || p === 21) { style.underline = true; }
      else if (p === 9) { style.strike = true; }
      else if (p === 22) { style.bold = false; style.dim = false; }
      else if (p === 23) { style.italic = false; }
      else if (p === 24) { style.underline = false; }
      else if (p === 29) { style.strike = false; }
      else if (p >= 30 && p <= 37) { style.fg = p - 30; }
      else if (p >= 90 && p <= 97) { style.fg = p - 90 + 8; }
      else if (p === 39) { style.fg = null; }
      else if (p >= 40 && p <= 47) { style.bg = p - 40; }
      else if (p >= 100 && p <= 107) { style.bg = p - 100 + 8; }
      else if (p === 49) { style.bg = null; }
      else if (p === 38 || p === 48) {
        var ext = extendedColour(params, i + 1);
        if (!ext) { return; }
        if (p === 38) { style.fg = ext.colour; } else { style.bg = ext.colour; }
        i += ext.used;
      }
      // Anything else (blink, inverse, fonts…) is left out rather than guessed at.
    }
  }

  function styleKey(style) {
    return (style.bold ? 'b' : '') + (style.dim ? 'd' : '') + (style.italic ? 'i' : '') +
      (style.underline ? 'u' : '') + (style.strike ? 's' : '') + '|' +
      (style.fg === null ? '' : style.fg) + '|' + (style.bg === null ? '' : style.bg);
  }

  function copyStyle(style) {
    var copy = {};
    for (var key in style) { copy[key] = style[key]; }
    return copy;
  }

  /**
   * Splits a line into runs of text with one style each: `[{text, style}]`, at most `maxChars`
   * characters of text, and whether the line was cut there.
   *
   * A carriage return inside a line (a progress bar redrawing itself) starts the visible text
   * over, as a terminal would show its last state; the colours set before it still hold.
   */
  function parseAnsi(line, maxChars) {
    var runs = [];
    var style = newStyle();
    var text = '';
    var runStyle = copyStyle(style);
    var shown = 0;
    var cut = false;
    var i = 0;
    var n = line.length;

    function flush() {
      if (text !== '') {
        runs.push({ text: text, style: runStyle });
        text = '';
      }
    }
    function styleChanged() {
      if (styleKey(style) !== styleKey(runStyle)) {
        flush();
        runStyle = copyStyle(style);
      }
    }

    while (i < n) {
      var c = line.charCodeAt(i);
      if (c === 0x1b || c === 0x9b) {
        var start = c === 0x9b ? i + 1 : i + 2;
        var kind = c === 0x9b ? '[' : line.charAt(i + 1);
        if (kind === '[') {
          // CSI: parameters and intermediates, then one final byte in @–~.
          var j = start;
          while (j < n && (line.charCodeAt(j) < 0x40 || line.charCodeAt(j) > 0x7e)) { j++; }
          if (j < n && line.charAt(j) === 'm' && /^[0-9;:]*$/.test(line.slice(start, j))) {
            applySgr(style, line.slice(start, j));
            styleChanged();
          }
          i = j + 1;
        } else if (kind === ']' || kind === 'P' || kind === '_' || kind === '^' || kind === 'X') {
          // OSC (titles, hyperlinks) and other strings: up to BEL or ST (ESC \).
          var k = start;
          while (k < n) {
            var ck = line.charCodeAt(k);
            if (ck === 0x07) { k += 1; break; }
            if (ck === 0x1b && line.charAt(k + 1) === '\\') { k += 2; break; }
            k++;
          }
          i = k;
        } else {
          // Two-character escapes, with intermediates (ESC ( B selects a character set).
          var m = i + 1;
          while (m < n && line.charCodeAt(m) >= 0x20 && line.charCodeAt(m) <= 0x2f) { m++; }
          i = m + 1;
        }
        continue;
      }
      if (c === 0x0d) {
        if (i + 1 < n) {
          runs = [];
          text = '';
          shown = 0;
          cut = false;
        }
        i++;
        continue;
      }
      if ((c < 0x20 && c !== 0x09) || c === 0x7f || (c >= 0x80 && c < 0xa0)) {
        i++;
        continue;
      }
      if (cut) {
        i++;
        continue;
      }
      if (shown >= maxChars) {
        cut = true;
        i++;
        continue;
      }
      // Whole runs of plain characters at once: most lines have no escapes at all.
      var end = i + 1;
      while (end < n && end - i < maxChars - shown) {
        var ce = line.charCodeAt(end);
        if (ce < 0x20 || ce === 0x7f || (ce >= 0x80 && ce < 0xa0)) { break; }
        end++;
      }
      text += line.slice(i, end);
      shown += end - i;
      i = end;
    }
    flush();
    return { runs: runs, cut: cut };
  }

  /** Characters that `parseAnsi` drops or acts on; a line without any is shown as it is. */
  var CONTROLS = /[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/;

  /** The text `parseAnsi` shows of a line, uncut and without styles. */
  function plainLine(line) {
    var runs = parseAnsi(line, Infinity).runs;
    var text = '';
    for (var r = 0; r < runs.length; r++) { text += runs[r].text; }
    return text;
  }

  function styleClasses(style) {
    var classes = [];
    if (style.bold) { classes.push('slw-bold'); }
    if (style.dim) { classes.push('slw-dim'); }
    if (style.italic) { classes.push('slw-italic'); }
    if (style.underline) { classes.push('slw-underline'); }
    if (style.strike) { classes.push('slw-strike'); }
    if (typeof style.fg === 'number') { classes.push('slw-fg-' + style.fg); }
    if (typeof style.bg === 'number') { classes.push('slw-bg-' + style.bg); }
    return classes;
  }

  /** Fills `parent` with the line's text, styled runs as spans; text nodes only. */
  function renderLineText(parent, line, maxChars) {
    var parsed = parseAnsi(line, maxChars);
    for (var r = 0; r < parsed.runs.length; r++) {
      var run = parsed.runs[r];
      var classes = styleClasses(run.style);
      var inlineFg = typeof run.style.fg === 'string';
      var inlineBg = typeof run.style.bg === 'string';
      if (classes.length === 0 && !inlineFg && !inlineBg) {
        parent.appendChild(document.createTextNode(run.text));
        continue;
      }
      var span = document.createElement('span');
      if (classes.length) { span.className = classes.join(' '); }
      if (inlineFg) { span.style.color = run.style.fg; }
      if (inlineBg) { span.style.backgroundColor = run.style.bg; }
      span.textContent = run.text;
      parent.appendChild(span);
    }
    if (parsed.cut) {
      var more = document.createElement('span');
      more.className = 'slw-log-cut';
      more.title = 'Line cut at ' + maxChars + ' characters';
      more.textContent = '…';
      parent.appendChild(more);
    }
  }

  // --- LogView ----------------------------------------------------------------------------------

  /**
   * A virtualised, live log in `container`.
   *
   * @param {HTMLElement} container An empty element; the view fills it (see log.css for its
   *   default height, which the page may override).
   * @param {Object} [options]
   * @param {boolean} [options.follow=true] Whether to start following (keeping the newest line
   *   in view). A `#L<n>` address at mount turns it off: the reader came for that line.
   * @param {function(boolean)} [options.onFollowChange] Called whenever following changes.
   * @param {number} [options.rowHeight=20] The height of every row, in CSS pixels.
   * @param {number} [options.overscan=25] Rows kept in the DOM above and below the view, so quick
   *   scrolling shows text rather than blank space before the next frame.
   * @param {number} [options.maxLineChars=4000] Characters shown of a line before it is cut.
   * @param {string} [options.label='Build log'] The accessible name of the scrolling region.
   * @param {boolean} [options.hashLinks=true] Whether `#L<n>` in the address scrolls to line n.
   * @param {string} [options.fileName='build.log'] The name the Save button gives the file.
   */
  function LogView(container, options) {
    options = options || {};
    this.container = container;
    this.rowHeight = options.rowHeight || 20;
    this.overscan = options.overscan === undefined ? 25 : options.overscan;
    this.maxLineChars = options.maxLineChars || 4000;
    this.onFollowChange = options.onFollowChange || null;
    this.hashLinks = options.hashLinks !== false;
    this.fileName = options.fileName || 'build.log';
    this.following = options.follow !== false;

    // One array per field: 100,000 small objects would cost far more memory and GC time.
    this._seqs = [];
    this._steps = [];
    this._texts = [];
    this._stderr = [];
    this._ats = [];
    this._stepNames = Object.create(null);
    this.lastSeq = 0;
    this.lineCount = 0;

    this.targetSeq = null;
    this._pendingTarget = null;
    this._rendered = { first: 0, last: 0 };
    this._rowEls = [];
    this._frame = 0;
    this._lastScrollTop = 0;
    this._inputs = 0;
    this._followInput = -1;
    this._followAt = 0;
    this._contentWidth = 0;
    this._height = -1;
    this._shift = '';
    this._numDigits = 0;
    this._note = '';
    this._statusText = '';
    this._destroyed = false;

    this._build(options.label || 'Build log');
    this._listen();
    if (this.hashLinks) {
      var seq = hashSeq();
      if (seq !== null) {
        this.following = false;
        this._pendingTarget = seq;
        this.targetSeq = seq;
      }
    }
    this._setData();
    this._schedule();
  }

  LogView.prototype._build = function (label) {
    var c = this.container;
    c.classList.add('slw-log');
    c.style.setProperty('--slw-log-row-height', this.rowHeight + 'px');
    while (c.firstChild) { c.removeChild(c.firstChild); }

    var toolbar = document.createElement('div');
    toolbar.className = 'slw-log-toolbar';
    this.statusEl = document.createElement('span');
    this.statusEl.className = 'slw-log-status';
    // No live region: it changes with every frame of a running log, too often to be read out.
    this.followButton = document.createElement('button');
    this.followButton.type = 'button';
    this.followButton.className = 'slw-log-button slw-log-follow';
    this.followButton.textContent = 'Follow';
    this.followButton.title = 'Keep the newest line in view (End)';
    // The view holds only the rows in sight, so selecting and copying cannot take a whole log;
    // Save writes every line loaded as a text file.
    this.saveButton = document.createElement('button');
    this.saveButton.type = 'button';
    this.saveButton.className = 'slw-log-button slw-log-save';
    this.saveButton.textContent = 'Save';
    this.saveButton.title = 'Save the lines loaded so far as a text file, without colours';
    var buttons = document.createElement('span');
    buttons.className = 'slw-log-buttons';
    buttons.appendChild(this.saveButton);
    buttons.appendChild(this.followButton);
    toolbar.appendChild(this.statusEl);
    toolbar.appendChild(buttons);

    this.viewport = document.createElement('div');
    this.viewport.className = 'slw-log-viewport';
    this.viewport.tabIndex = 0;
    this.viewport.setAttribute('role', 'region');
    this.viewport.setAttribute('aria-label', label);
    this.spacer = document.createElement('div');
    this.spacer.className = 'slw-log-spacer';
    this.rowsEl = document.createElement('div');
    this.rowsEl.className = 'slw-log-rows';
    this.spacer.appendChild(this.rowsEl);
    this.viewport.appendChild(this.spacer);

    c.appendChild(toolbar);
    c.appendChild(this.viewport);
  };

  LogView.prototype._listen = function () {
    var self = this;
    this._onScroll = function () { self._scrolled(); };
    this._onInput = function () { self._inputs++; };
    this._onKey = function (event) {
      // Native scrolling handles the other keys. End means "follow again", also when the view
      // is at the bottom already (no scroll event then); the view goes there itself, because
      // the browser's smooth scroll would still be moving after it and read as scrolling up.
      if (event.key === 'End' && !event.shiftKey && !event.altKey && !event.metaKey &&
        !event.ctrlKey) {
        event.preventDefault();
        self.setFollow(true);
      }
    };
    this._onButton = function () { self.setFollow(!self.following); };
    this._onSave = function () { self.save(); };
    this._onHash = function () {
      var seq = hashSeq();
      if (seq !== null) { self.scrollToSeq(seq, { highlight: true, onlyIfHidden: true }); }
    };
    this.viewport.addEventListener('scroll', this._onScroll, { passive: true });
    this.viewport.addEventListener('keydown', this._onKey);
    // Counted before they scroll, to tell the reader's scrolling from a smooth scroll's end.
    ['wheel', 'keydown', 'pointerdown', 'touchstart'].forEach(function (type) {
      self.viewport.addEventListener(type, self._onInput, { capture: true, passive: true });
    });
    this.followButton.addEventListener('click', this._onButton);
    this.saveButton.addEventListener('click', this._onSave);
    if (this.hashLinks) { window.addEventListener('hashchange', this._onHash); }
    if (typeof ResizeObserver === 'function') {
      this._resizeObserver = new ResizeObserver(function () { self._schedule(); });
      this._resizeObserver.observe(this.viewport);
    }
  };

  /** Removes the view's listeners; the container's content stays. */
  LogView.prototype.destroy = function () {
    this._destroyed = true;
    this.viewport.removeEventListener('scroll', this._onScroll);
    this.viewport.removeEventListener('keydown', this._onKey);
    var self = this;
    ['wheel', 'keydown', 'pointerdown', 'touchstart'].forEach(function (type) {
      self.viewport.removeEventListener(type, self._onInput, { capture: true });
    });
    this.followButton.removeEventListener('click', this._onButton);
    this.saveButton.removeEventListener('click', this._onSave);
    window.removeEventListener('hashchange', this._onHash);
    if (this._resizeObserver) { this._resizeObserver.disconnect(); }
    if (this._frame) { cancelAnimationFrame(this._frame); }
  };

  /**
   * Adds a page of the log API's `format=text`: `runs` (`{seq, step, stream, at, lines}`, the
   * run's `lines` count numbered from `seq`) name the page's `texts` in order. Lines at or
   * before the last seq held are skipped. Returns how many lines were added.
   */
  LogView.prototype.appendText = function (runs, texts) {
    var added = 0;
    var index = 0;
    for (var i = 0; i < runs.length; i++) {
      var run = runs[i];
      if (!run || typeof run.seq !== 'number' || typeof run.lines !== 'number') { break; }
      var step = typeof run.step === 'string' ? run.step : '';
      var name = this._stepNames[step];
      if (name === undefined) { name = this._stepNames[step] = step; }
      var stderr = run.stream === 'stderr';
      var at = typeof run.at === 'string' ? run.at : '';
      for (var j = 0; j < run.lines && index < texts.length; j++, index++) {
        var seq = run.seq + j;
        if (seq <= this.lastSeq) { continue; }
        this._seqs.push(seq);
        this._steps.push(name);
        this._texts.push(texts[index]);
        this._stderr.push(stderr);
        this._ats.push(at);
        this.lastSeq = seq;
        added++;
      }
    }
    if (added) {
      this.lineCount = this._seqs.length;
      this._schedule();
    }
    return added;
  };

  /**
   * Adds lines (`{seq, step, at, stream, line}` objects, in seq order). Lines at or before the
   * last seq already held are skipped, so overlapping pages and a reconnected stream are safe.
   */
  LogView.prototype.append = function (lines) {
    var added = 0;
    for (var i = 0; i < lines.length; i++) {
      var l = lines[i];
      if (!l || typeof l.seq !== 'number' || l.seq <= this.lastSeq) { continue; }
      var step = typeof l.step === 'string' ? l.step : '';
      // One string per step name rather than one per line.
      var name = this._stepNames[step];
      if (name === undefined) { name = this._stepNames[step] = step; }
      this._seqs.push(l.seq);
      this._steps.push(name);
      this._texts.push(typeof l.line === 'string' ? l.line : '');
      this._stderr.push(l.stream === 'stderr');
      this._ats.push(typeof l.at === 'string' ? l.at : '');
      this.lastSeq = l.seq;
      added++;
    }
    if (added) {
      this.lineCount = this._seqs.length;
      this._schedule();
    }
    return added;
  };

  /**
   * The lines loaded so far as plain text, one per line, each as the view shows it uncut:
   * escape sequences and control characters dropped, a line redrawn after a carriage return
   * as it last stood.
   */
  LogView.prototype.plainText = function () {
    var out = new Array(this._texts.length);
    for (var i = 0; i < this._texts.length; i++) {
      var line = this._texts[i];
      out[i] = CONTROLS.test(line) ? plainLine(line) : line;
    }
    return out.length ? out.join('\n') + '\n' : '';
  };

  /** Offers the lines loaded so far as a download named `fileName`. */
  LogView.prototype.save = function () {
    var url = URL.createObjectURL(new Blob([this.plainText()], { type: 'text/plain;charset=utf-8' }));
    var link = document.createElement('a');
    link.href = url;
    link.download = this.fileName;
    link.hidden = true;
    document.body.appendChild(link);
    link.click();
    document.body.removeChild(link);
    // The browser has read the object by the time this runs.
    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  };

  /** Starts or stops following; while following, new lines keep the view at the bottom. */
  LogView.prototype.setFollow = function (follow) {
    follow = !!follow;
    if (follow) {
      this._pendingTarget = null;
      this._followInput = this._inputs;
      this._followAt = Date.now();
    }
    if (follow === this.following) {
      if (follow) { this._schedule(); }
      return;
    }
    this.following = follow;
    this._setData();
    this._schedule();
    if (this.onFollowChange) { this.onFollowChange(follow); }
  };

  /** A short note after the line count in the status line (say, "reconnecting…"); '' clears it. */
  LogView.prototype.setNote = function (note) {
    this._note = note || '';
    this._schedule();
  };

  /**
   * Scrolls line `seq` into the middle of the view and stops following. With `highlight`, marks
   * it as the target line. A line not loaded yet is scrolled to when it arrives.
   */
  LogView.prototype.scrollToSeq = function (seq, opts) {
    opts = opts || {};
    this.setFollow(false);
    if (opts.highlight) { this.targetSeq = seq; }
    this._pendingTarget = seq;
    this._pendingOnlyIfHidden = !!opts.onlyIfHidden;
    this._rendered = { first: 0, last: 0 }; // redraw, for the highlight
    this._clearRows();
    this._schedule();
  };

  LogView.prototype._schedule = function () {
    if (this._frame || this._destroyed) { return; }
    var self = this;
    this._frame = requestAnimationFrame(function () {
      self._frame = 0;
      self._render();
    });
  };

  /** The index of the line with `seq` (seqs ascend), or of the nearest after it. */
  LogView.prototype._indexOf = function (seq) {
    var lo = 0;
    var hi = this._seqs.length;
    while (lo < hi) {
      var mid = (lo + hi) >>> 1;
      if (this._seqs[mid] < seq) { lo = mid + 1; } else { hi = mid; }
    }
    return lo;
  };

  /** Pixels of real content per pixel of scroll: 1 unless the log is taller than the cap. */
  LogView.prototype._geometry = function () {
    var real = this.lineCount * this.rowHeight;
    var height = Math.min(real, MAX_SCROLL_HEIGHT);
    var view = this.viewport.clientHeight;
    var scale = height > view && real > height ? (real - view) / (height - view) : 1;
    return { real: real, height: height, view: view, scale: scale };
  };

  LogView.prototype._scrolled = function () {
    this._noticeScroll(this.viewport.scrollTop);
    this._schedule();
  };

  /**
   * Follows the reader's scrolling: a move up away from the bottom stops following, a move down
   * to the bottom starts it again. Also called as a frame is drawn, because a smooth scroll
   * (keys, some wheels) may move a step that the view's own jump to the bottom then undoes
   * before the scroll event tells of it.
   */
  LogView.prototype._noticeScroll = function (top) {
    var vp = this.viewport;
    var atBottom = top + vp.clientHeight >= vp.scrollHeight - 2;
    // The view's own moves go down, and a growing viewport pulls the position up while keeping
    // it at the bottom: only a move up that leaves the bottom is the reader's.
    if (this.following && !atBottom && top < this._lastScrollTop - 1) {
      // A smooth scroll (a PageUp, a wheel) goes on for a moment after it began, and setting
      // the position does not stop it: moves up right after the reader asked to follow, with
      // no input since, are what is left of it, and the next frame goes to the bottom again.
      if (this._inputs !== this._followInput || Date.now() - this._followAt > 1000) {
        this.setFollow(false);
      }
    } else if (!this.following && atBottom && top > this._lastScrollTop + 1 &&
      this._pendingTarget === null) {
      this.setFollow(true);
    }
    this._lastScrollTop = top;
  };

  LogView.prototype._clearRows = function () {
    while (this.rowsEl.firstChild) { this.rowsEl.removeChild(this.rowsEl.firstChild); }
    this._rowEls = [];
  };

  LogView.prototype._makeRow = function (index) {
    var seq = this._seqs[index];
    var row = document.createElement('div');
    row.className = 'slw-log-row' + (this._stderr[index] ? ' slw-log-stderr' : '') +
      (seq === this.targetSeq ? ' slw-log-target' : '');
    row.setAttribute('data-seq', String(seq));
    var num = document.createElement('a');
    num.className = 'slw-log-num';
    num.href = '#L' + seq;
    // Out of the tab order: a hundred links would stand between the log and the rest of the
    // page; the log itself takes the focus and scrolls with the keys.
    num.tabIndex = -1;
    num.textContent = String(seq);
    if (this._ats[index]) { num.title = this._ats[index]; }
    var step = document.createElement('span');
    step.className = 'slw-log-step';
    step.textContent = this._steps[index];
    step.title = this._steps[index];
    var text = document.createElement('span');
    text.className = 'slw-log-text';
    renderLineText(text, this._texts[index], this.maxLineChars);
    row.appendChild(num);
    row.appendChild(step);
    row.appendChild(text);
    return row;
  };

  LogView.prototype._render = function () {
    var vp = this.viewport;
    var rowH = this.rowHeight;
    // Reads first, while the layout of the last frame is still valid: each read after a write
    // would make the browser lay out the page again, and this runs every frame a log grows.
    var g = this._geometry();
    var scrollTop = vp.scrollTop;
    this._noticeScroll(scrollTop);
    // The scrollable width only grows, so that scrolling down past a long line does not snap
    // the horizontal position back. (Measured a frame late: the rows drawn last time.)
    var width = this.rowsEl.offsetWidth;
    if (width > this._contentWidth) {
      this._contentWidth = width;
      this.spacer.style.minWidth = width + 'px';
    }

    var digits = String(this.lastSeq || 1).length;
    if (digits !== this._numDigits) {
      this._numDigits = digits;
      this.container.style.setProperty('--slw-log-num-width', Math.max(digits, 3) + 'ch');
    }
    if (this._height !== g.height) {
      this._height = g.height;
      this.spacer.style.height = g.height + 'px';
    }
    var maxTop = Math.max(0, g.height - g.view);
    var wanted = null;
    if (this._pendingTarget !== null && this.lineCount) {
      // A line not loaded yet waits for its page; a missing one shows its nearest neighbour.
      if (this._pendingTarget <= this.lastSeq) {
        var target = Math.min(this._indexOf(this._pendingTarget), this.lineCount - 1);
        var lineTop = target * rowH;
        var realTopNow = scrollTop * g.scale;
        var hidden = lineTop < realTopNow || lineTop + rowH > realTopNow + g.view;
        if (!this._pendingOnlyIfHidden || hidden) {
          wanted = Math.max(0, lineTop - (g.view - rowH) / 2) / g.scale;
        }
        this._pendingTarget = null;
      }
    } else if (this.following) {
      wanted = maxTop;
    }
    if (wanted !== null) {
      scrollTop = Math.min(Math.round(wanted), maxTop);
      if (vp.scrollTop !== scrollTop) { vp.scrollTop = scrollTop; }
      this._lastScrollTop = scrollTop;
    }

    // Whole pixels: a scaled position would put the rows between pixels and blur their text.
    var realTop = Math.round(scrollTop * g.scale);
    var firstVisible = Math.floor(realTop / rowH);
    var lastVisible = Math.min(this.lineCount, Math.ceil((realTop + g.view) / rowH));
    var first = Math.max(0, firstVisible - this.overscan);
    var last = Math.min(this.lineCount, lastVisible + this.overscan);
    this._updateRows(first, last);
    // Rows sit in normal flow; the block of them moves to where its first row belongs.
    var shift = 'translateY(' + (first * rowH - realTop + scrollTop) + 'px)';
    if (this._shift !== shift) {
      this._shift = shift;
      this.rowsEl.style.transform = shift;
    }

    this._visible = { first: firstVisible, last: lastVisible };
    this._setData();
  };

  /** Brings the rows in the DOM to lines [first, last), keeping the rows both ranges share. */
  LogView.prototype._updateRows = function (first, last) {
    var old = this._rendered;
    var rowsEl = this.rowsEl;
    if (first >= old.last || last <= old.first || old.first === old.last) {
      this._clearRows();
      var fragment = document.createDocumentFragment();
      for (var i = first; i < last; i++) {
        var row = this._makeRow(i);
        this._rowEls.push(row);
        fragment.appendChild(row);
      }
      rowsEl.appendChild(fragment);
    } else {
      while (old.first < first) { rowsEl.removeChild(this._rowEls.shift()); old.first++; }
      while (old.last > last) { rowsEl.removeChild(this._rowEls.pop()); old.last--; }
      if (first < old.first) {
        var before = document.createDocumentFragment();
        var added = [];
        for (var b = first; b < old.first; b++) {
          var rb = this._makeRow(b);
          added.push(rb);
          before.appendChild(rb);
        }
        rowsEl.insertBefore(before, rowsEl.firstChild);
        this._rowEls = added.concat(this._rowEls);
      }
      if (last > old.last) {
        var after = document.createDocumentFragment();
        for (var a = old.last; a < last; a++) {
          var ra = this._makeRow(a);
          this._rowEls.push(ra);
          after.appendChild(ra);
        }
        rowsEl.appendChild(after);
      }
    }
    this._rendered = { first: first, last: last };
  };

  /** Sets an attribute only when it changes: each change costs a style check. */
  function setAttr(el, name, value) {
    if (el.getAttribute(name) !== value) { el.setAttribute(name, value); }
  }

  var numberFormat = typeof Intl === 'object' ? new Intl.NumberFormat('en-US') : null;

  LogView.prototype._setData = function () {
    var c = this.container;
    var following = this.following ? 'true' : 'false';
    setAttr(c, 'data-lines', String(this.lineCount));
    setAttr(c, 'data-last-seq', String(this.lastSeq));
    setAttr(c, 'data-following', following);
    var visible = this._visible;
    if (visible && this.lineCount) {
      setAttr(c, 'data-top-seq', String(this._seqs[Math.min(visible.first, this.lineCount - 1)]));
      setAttr(c, 'data-bottom-seq',
        String(this._seqs[Math.max(0, Math.min(visible.last, this.lineCount) - 1)]));
    }
    setAttr(this.followButton, 'aria-pressed', following);
    var status = (numberFormat ? numberFormat.format(this.lineCount) : String(this.lineCount)) +
      (this.lineCount === 1 ? ' line' : ' lines') +
      (this.following ? ' · following' : ' · not following') + (this._note ? ' · ' + this._note : '');
    if (status !== this._statusText) {
      this._statusText = status;
      this.statusEl.textContent = status;
    }
  };

  /** The n of a `#L<n>` address, or null. */
  function hashSeq() {
    var match = /^#L(\d{1,15})$/.exec(window.location.hash);
    return match ? parseInt(match[1], 10) : null;
  }

  // --- loading from the API ---------------------------------------------------------------------

  function withQuery(url, query) {
    return url + (url.indexOf('?') === -1 ? '?' : '&') + query;
  }

  function HttpError(status, message) {
    var error = new Error(message);
    error.name = 'HttpError';
    error.status = status;
    return error;
  }

  /**
   * Fills `view` from the log API at `logsUrl` (`/api/v1/projects/{p}/builds/{n}/logs`).
   *
   * @param {LogView} view
   * @param {string} logsUrl
   * @param {Object} [options]
   * @param {boolean} [options.live=false] After the stored lines, follow the server-sent event
   *   stream until the build ends.
   * @param {function(string)} [options.onEnd] Called with the build's final status when the
   *   stream ends.
   * @param {function()} [options.onLoaded] Called once the stored lines are all in the view.
   * @param {function(Error)} [options.onError] Called when loading stops for good: the server
   *   refused (4xx) the pages or the stream. Network failures and 5xx are retried instead.
   * @returns {{close: function()}} `close()` stops loading.
   */
  function loadLog(view, logsUrl, options) {
    options = options || {};
    var closed = false;
    var source = null;
    var retryTimer = 0;
    var retryDelay = 1000;
    var pending = [];
    var flushFrame = 0;
    var abort = typeof AbortController === 'function' ? new AbortController() : null;

    function fail(error) {
      if (closed) { return; }
      close();
      view.setNote('log unavailable');
      if (options.onError) { options.onError(error); }
    }

    function retryLater(what) {
      view.setNote('connection lost, retrying…');
      retryTimer = setTimeout(function () {
        retryTimer = 0;
        what();
      }, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 30000);
    }

    function fetchPage(after) {
      // The text page: its lines as they are, named by runs, rather than an object per line;
      // several times faster for the server to make and for the browser to read.
      var url = withQuery(logsUrl, 'after=' + after + '&limit=' + PAGE_LINES + '&format=text');
      return fetch(url, {
        credentials: 'same-origin',
        headers: { Accept: 'text/plain' },
        signal: abort ? abort.signal : undefined,
      }).then(function (response) {
        if (!response.ok) {
          throw HttpError(response.status, 'log page: HTTP ' + response.status);
        }
        return response.text();
      }).then(function (body) {
        var end = body.indexOf('\n');
        var head = JSON.parse(end < 0 ? body : body.slice(0, end));
        var texts = end < 0 ? [] : body.slice(end + 1).split('\n');
        texts.pop(); // every line ends in a newline: nothing follows the last
        return { runs: Array.isArray(head.runs) ? head.runs : [], texts: texts };
      });
    }

    /**
     * Fetches pages after the last line held until a short one, appending each as it comes,
     * then calls `then`.
     *
     * Once a page came full, the one after it is asked for too before it is needed: seqs are
     * numbered without gaps, so it starts a page further, and the server and the network work
     * on it while this page is parsed and drawn (about half the time of a long log). Should
     * the seqs have a gap after all, that page is dropped and asked for again.
     */
    function loadPages(then) {
      var inFlight = []; // [{after, page}], in seq order
      function ask(after) {
        var page = fetchPage(after);
        page.catch(function () { /* a dropped request's failure is nobody's business */ });
        inFlight.push({ after: after, page: page });
      }
      function next() {
        inFlight.shift().page.then(function (page) {
          if (closed) { return; }
          retryDelay = 1000;
          view.setNote('');
          view.appendText(page.runs, page.texts);
          var count = page.texts.length;
          // A short page is the end as much as an empty one: spare the extra request. Lines
          // written meanwhile come with the stream, which starts after the last line held.
          if (count < PAGE_LINES) {
            inFlight = [];
            then();
            return;
          }
          if (!inFlight.length || inFlight[0].after !== view.lastSeq) {
            inFlight = [];
            ask(view.lastSeq);
          }
          if (inFlight.length < 2) { ask(view.lastSeq + PAGE_LINES); }
          next();
        }).catch(function (error) {
          if (closed || (error && error.name === 'AbortError')) { return; }
          if (error && error.status >= 400 && error.status < 500) {
            fail(error);
          } else {
            retryLater(function () { loadPages(then); });
          }
        });
      }
      ask(view.lastSeq);
      next();
    }

    function flush() {
      if (flushFrame) {
        cancelAnimationFrame(flushFrame);
        flushFrame = 0;
      }
      if (pending.length) {
        var batch = pending;
        pending = [];
        view.append(batch);
      }
    }

    function openStream() {
      if (closed) { return; }
      var es = new EventSource(withQuery(logsUrl, 'follow=true&after=' + view.lastSeq));
      source = es;
      es.addEventListener('open', function () {
        view.setNote('');
      });
      es.addEventListener('line', function (event) {
        var line;
        try { line = JSON.parse(event.data); } catch (e) { return; }
        retryDelay = 1000;
        pending.push(line);
        // Once per frame; a hidden tab gets no frames, so a large backlog goes in at once.
        if (pending.length >= PAGE_LINES) {
          flush();
        } else if (!flushFrame) {
          flushFrame = requestAnimationFrame(function () {
            flushFrame = 0;
            flush();
          });
        }
      });
      es.addEventListener('end', function (event) {
        flush();
        es.close();
        source = null;
        closed = true;
        var status = 'unknown';
        try { status = JSON.parse(event.data).status || status; } catch (e) { /* unknown */ }
        if (options.onEnd) { options.onEnd(status); }
      });
      es.addEventListener('error', function () {
        if (closed || source !== es) { return; }
        // EventSource would reconnect by itself, but with the `after` it started with: the
        // lines since would come twice, and a long build's whole log again. Start over from
        // the last line held instead, by way of the pages: EventSource does not say why it
        // failed, a page request does (a 401 or 404 must not be retried forever).
        flush();
        es.close();
        source = null;
        retryLater(function () { loadPages(openStream); });
      });
    }

    function close() {
      closed = true;
      if (retryTimer) { clearTimeout(retryTimer); retryTimer = 0; }
      if (source) { source.close(); source = null; }
      if (abort) { abort.abort(); }
      flush();
    }

    loadPages(function () {
      if (options.onLoaded) { options.onLoaded(); }
      if (options.live) { openStream(); }
    });
    return { close: close };
  }

  window.SlipwayLog = { LogView: LogView, loadLog: loadLog, parseAnsi: parseAnsi };
})();
